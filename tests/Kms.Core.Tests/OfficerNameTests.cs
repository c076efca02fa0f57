using Kms.Core.Errors;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Testing;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Core.Tests;

/// <summary>
/// Officer names are what officers read in the text they sign: "olga", "olga " and "o  lga" look
/// the same there. A new officer's name has no space at either end and no two in a row; a name an
/// existing deployment already holds (its genesis file, its database, an approval bundle) still
/// loads, and an officer change may keep it.
/// </summary>
public sealed class OfficerNameTests : IDisposable
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
    private static readonly Caller SecurityOfficer = DomainHarness.SecurityOfficer;
    private readonly TestOfficers _officers = new("olga ", "o  lga", "bob", "carol", "dave", "olga");
    private readonly FakeHsm _hsm = new();

    public void Dispose()
    {
        _officers.Dispose();
        _hsm.Dispose();
    }

    [Theory]
    [InlineData("olga ", "olga")]
    [InlineData(" olga", "olga")]
    [InlineData("o  lga", "o lga")]
    [InlineData("Olga   K.", "Olga K.")]
    public void NewOfficerName_SpaceAtAnEndOrTwoInARow_Refused_SayingHowItWouldRead(string name, string reads)
    {
        var e = Assert.Throws<KmsException>(() => Officer.CheckNewName(name));
        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Equal($"officers.name: the officer name \"{name}\" has a space at its start or end, or two in a row: it would read as \"{reads}\" in the text officers sign; give it without them", e.Message);

        // A ceremony's genesis is made of new names.
        var officer = Officer.Create(name, _officers["bob"].PublicKey);
        Assert.Contains($"\"{name}\"", Assert.Throws<KmsException>(() => OfficerSet.CreateDeploymentGenesis([officer, _officers["carol"]], 1)).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("olga")]
    [InlineData("Olga K.")]
    [InlineData("o.lga@ops-1")]
    [InlineData("a b c")]
    public void NewOfficerName_OrdinaryText_Accepted(string name)
    {
        Officer.CheckNewName(name);
        Assert.Equal(name, OfficerSet.CreateDeploymentGenesis([Officer.Create(name, _officers["bob"].PublicKey), _officers["carol"]], 2).Officers.Single(o => o.Fingerprint == _officers["bob"].Fingerprint).Name);
    }

    // A deployment whose genesis (written before the rule) holds "olga " and "o  lga": it still
    // loads, an officer change may keep those names for the same keys, but a new officer may not
    // be given such a name, nor one that reads like a name the set keeps.
    [Fact]
    public async Task ChangeOfficers_NewNameWithSpaces_OrReadingLikeAKeptName_Refused_KeptNamesAccepted_TheOldChainLoads()
    {
        var store = new InMemoryStore();
        var genesis = OfficerSet.CreateGenesis(_officers.Select("olga ", "o  lga", "bob"), 2);
        var loaded = GenesisFile.Parse(GenesisFile.Serialize(genesis));
        Assert.Equal(genesis.Hash, loaded.Hash);
        var quorum = new QuorumService(store, store, _hsm, new FakeTimeProvider(T0), new QuorumOptions { Genesis = loaded });
        Assert.Equal(genesis.Hash, (await quorum.InitializeAsync(default))!.Hash);

        Task<QuorumRequest> ChangeAsync(params Officer[] officers) => quorum.CreateAsync(SecurityOfficer, new CreateQuorumRequestCommand(null, QuorumOperation.ChangeOfficers)
        {
            NewOfficers = officers,
            NewThreshold = 1,
            Ttl = TimeSpan.FromHours(1),
        }, default);

        async Task RefusedAsync(string message, params Officer[] officers)
        {
            var e = await Assert.ThrowsAsync<KmsException>(() => ChangeAsync(officers));
            Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
            Assert.Contains(message, e.Message, StringComparison.Ordinal);
        }

        // dave joins as "dave ": refused. Bob renamed "b  ob": refused (his new name is new).
        await RefusedAsync("change_officers.officers[2].name: the officer name \"dave \" has a space at its start or end", _officers["olga "], _officers["bob"], Officer.Create("dave ", _officers["dave"].PublicKey));
        await RefusedAsync("the officer name \"b  ob\" has a space", _officers["olga "], Officer.Create("b  ob", _officers["bob"].PublicKey));

        // A new officer "olga" beside the kept "olga ": two names that read alike.
        await RefusedAsync($"the officer name \"olga\" reads like the name of officer {_officers["olga "].Fingerprint} (\"olga \")", _officers["olga "], _officers["bob"], _officers["olga"]);

        // "o  lga" given to another key is a new name, refused; "olga " renamed "olga" (same key) is fine.
        await RefusedAsync("the officer name \"o  lga\" has a space", _officers["olga "], Officer.Create("o  lga", _officers["dave"].PublicKey));
        Assert.Empty(await store.ListQuorumRequestsAsync(null, null, 100, default));

        // The names the set holds, kept for the same keys, with a new officer of an ordinary name.
        var kept = await ChangeAsync(_officers["olga "], _officers["o  lga"], _officers["bob"], _officers["dave"]);
        Assert.Contains(kept.Parameters, p => p.Key == "new-officer:" + _officers["olga "].Fingerprint && p.Value == "olga ");
        var renamed = await ChangeAsync(Officer.Create("olga", _officers["olga "].PublicKey), _officers["bob"]);
        Assert.Contains(renamed.Parameters, p => p.Key == "new-officer:" + _officers["olga "].Fingerprint && p.Value == "olga");

        // A chain whose later set keeps such a name verifies, and an approval bundle carrying it parses.
        var next = _officers.Change(genesis, _officers.Select("olga ", "o  lga", "carol"), 2, T0, "olga ", "bob");
        Assert.Same(next, OfficerChain.Verify([genesis, next], genesis));
        var request = TestOfficers.Request(next, QuorumOperation.RestoreDomain, [KeyValuePair.Create("token-label", "kms-prod-b")], T0);
        request = request with { Approvals = [_officers.Approve("o  lga", request, T0), _officers.Approve("olga ", request, T0)], State = QuorumRequestState.Approved, ExecuteTime = T0 };
        var bundle = ApprovalBundle.Parse(new ApprovalBundle(request, [genesis, next]).Serialize());
        Assert.Equal(["o  lga", "olga "], bundle.Verify(genesis, QuorumOperation.RestoreDomain, request.DomainKcv, T0.AddMinutes(1)).Approvers.Select(o => o.Name).Order(StringComparer.Ordinal));
    }
}
