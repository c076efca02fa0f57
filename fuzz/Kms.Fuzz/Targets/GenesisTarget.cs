using System.Text;
using Kms.Core.Errors;
using Kms.Core.Quorum;

namespace Kms.Fuzz;

/// <summary>
/// Officer genesis files (docs/quorum.md): <see cref="GenesisFile.Parse"/>. Contract: refusal is
/// a KmsException FailedPrecondition; a parsed genesis serializes to a file that parses to the same set.
/// </summary>
internal sealed class GenesisTarget : FuzzTarget
{
    public override string Name => "genesis";

    public override string Description => "officer genesis file: GenesisFile.Parse (refusal: KmsException FailedPrecondition)";

    public override void Run(byte[] input)
    {
        OfficerSet genesis;
        try
        {
            genesis = GenesisFile.Parse(Encoding.UTF8.GetString(input));
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
        {
            return;
        }

        if (GenesisFile.Parse(GenesisFile.Serialize(genesis)).Hash != genesis.Hash)
        {
            throw new FuzzContractException("a parsed genesis file does not read back as the same officer set");
        }
    }

    public override IEnumerable<(string Name, byte[] Bytes)> Seeds()
    {
        using var officers = new ApprovalTarget.Officers("alice", "bob", "zoe.smith");
        yield return ("two-of-three", Encoding.UTF8.GetBytes(GenesisFile.Serialize(OfficerSet.CreateGenesis(officers.Select("alice", "bob", "zoe.smith"), 2))));
    }
}
