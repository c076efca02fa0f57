using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Kms.Core.Errors;

namespace Kms.Core.Quorum;

/// <summary>
/// The officers and the threshold M of approvals a quorum operation needs, as one link of a
/// hash chain: each set names the hash of the one before it, and every set after the genesis
/// (sequence 0) carries the <see cref="Change"/> request its predecessor's quorum approved.
/// <see cref="OfficerChain.Verify"/> checks the whole chain back to a genesis pinned outside
/// the database.
/// </summary>
public sealed class OfficerSet
{
    /// <summary>Most officers in a set.</summary>
    public const int MaxOfficers = 32;

    /// <summary>The first line of a set's canonical text.</summary>
    public const string FormatTag = "kms officer set v1";

    /// <summary>The "previous hash" of the genesis set.</summary>
    public static readonly string NoPrevious = new('0', 64);

    private OfficerSet(long sequence, string previousHash, int threshold, IReadOnlyList<Officer> officers, QuorumRequest? change)
    {
        Sequence = sequence;
        PreviousHash = previousHash;
        Threshold = threshold;
        Officers = officers;
        Change = change;
        Hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(Render())));
    }

    /// <summary>Position in the chain: 0 for the genesis set.</summary>
    public long Sequence { get; }

    /// <summary>The hash of the set before; for the genesis, 64 zeros or the deployment's random value (<see cref="CreateDeploymentGenesis"/>).</summary>
    public string PreviousHash { get; }

    /// <summary>M: how many distinct officers of this set must approve.</summary>
    public int Threshold { get; }

    /// <summary>The officers, ordered by fingerprint.</summary>
    public IReadOnlyList<Officer> Officers { get; }

    /// <summary>Lower-case hex SHA-256 of <see cref="Render"/>'s UTF-8 bytes: what the next set and every request name.</summary>
    public string Hash { get; }

    /// <summary>The executed CHANGE_OFFICERS request, with the approvals of the previous set, that installed this set; null for the genesis.</summary>
    public QuorumRequest? Change { get; }

    /// <summary>
    /// A genesis set (sequence 0) whose "previous" is <see cref="NoPrevious"/>: its hash depends on
    /// the officers and the threshold alone, so every deployment pinning such a genesis for the same
    /// officers pins the same hash, and an officer change approved in one verifies in the others.
    /// Genesis files written before <see cref="CreateDeploymentGenesis"/> are of this kind; a key
    /// ceremony makes its own with <see cref="CreateDeploymentGenesis"/>.
    /// </summary>
    /// <exception cref="KmsException">InvalidArgument: no officers, more than 32, a key or name twice, or a threshold outside 1..N.</exception>
    public static OfficerSet CreateGenesis(IEnumerable<Officer> officers, int threshold) => Create(0, NoPrevious, officers, threshold, null);

    /// <summary>
    /// The genesis set (sequence 0) of one deployment's key ceremony: its "previous" line holds 256
    /// random bits instead of zeros, so its hash is this deployment's own even where another
    /// deployment has the same officers and threshold. Every request and every officer change names
    /// the set it was made for by hash, so nothing the officers approved for another deployment —
    /// above all a CHANGE_OFFICERS copied into this one's database — verifies in this chain.
    /// </summary>
    /// <exception cref="KmsException">InvalidArgument as for <see cref="CreateGenesis"/>.</exception>
    /// <remarks>Its officers' names are new: <see cref="CheckNewNames"/>.</remarks>
    public static OfficerSet CreateDeploymentGenesis(IEnumerable<Officer> officers, int threshold)
    {
        var list = (officers ?? throw new ArgumentNullException(nameof(officers))).ToList();
        CheckNewNames(list, null);
        return Create(0, Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)), list, threshold, null);
    }

    /// <summary>
    /// Checks the names of a set being made — a ceremony's genesis (<paramref name="current"/>
    /// null) or an officer change (the current set): each name that is new, i.e. not the name the
    /// same officer (same key) already has in <paramref name="current"/>, passes
    /// <see cref="Officer.CheckNewName"/> and does not read like another officer's name in the set
    /// (<see cref="Officer.Readable"/>, ignoring case). A name an existing deployment already holds
    /// is kept as it is: loading a set never checks this.
    /// </summary>
    /// <param name="officers">The proposed officers.</param>
    /// <param name="current">The set they would follow, or null for a genesis.</param>
    /// <param name="fieldPrefix">Put before the field an InvalidArgument names, e.g. <c>change_officers.</c>.</param>
    /// <exception cref="KmsException">InvalidArgument naming the name.</exception>
    public static void CheckNewNames(IEnumerable<Officer> officers, OfficerSet? current, string fieldPrefix = "")
    {
        ArgumentNullException.ThrowIfNull(officers);
        var list = officers.ToList();
        for (var i = 0; i < list.Count; i++)
        {
            var officer = list[i];
            if (current?.Find(officer.Fingerprint) is { } kept && string.Equals(kept.Name, officer.Name, StringComparison.Ordinal))
            {
                continue;
            }

            var field = string.Create(CultureInfo.InvariantCulture, $"{fieldPrefix}officers[{i}]");
            Officer.CheckNewName(officer.Name, field);
            if (list.FirstOrDefault(o => o.Fingerprint != officer.Fingerprint && string.Equals(Officer.Readable(o.Name), officer.Name, StringComparison.OrdinalIgnoreCase)) is { } alike)
            {
                throw KmsErrors.InvalidArgument(field + ".name",
                    $"the officer name \"{officer.Name}\" reads like the name of officer {alike.Fingerprint} (\"{alike.Name}\") in the text officers sign; names must tell officers apart");
            }
        }
    }

    /// <summary>The set that would follow this one (not yet approved: <see cref="Change"/> is null).</summary>
    /// <param name="officers">The proposed officers.</param>
    /// <param name="threshold">The proposed threshold.</param>
    /// <param name="fieldPrefix">Put before the fields an InvalidArgument names (<c>officers</c>, <c>threshold</c>): the request's message holding them, e.g. <c>change_officers.</c>.</param>
    /// <exception cref="KmsException">InvalidArgument as for <see cref="CreateGenesis"/>.</exception>
    public OfficerSet Successor(IEnumerable<Officer> officers, int threshold, string fieldPrefix = "") => Create(Sequence + 1, Hash, officers, threshold, null, fieldPrefix);

    /// <summary>A set as stored (the store rebuilds it; the chain verifier decides whether to trust it).</summary>
    public static OfficerSet Restore(long sequence, string previousHash, IEnumerable<Officer> officers, int threshold, QuorumRequest? change) =>
        Create(sequence, previousHash, officers, threshold, change);

    /// <summary>This set, installed by <paramref name="change"/>.</summary>
    public OfficerSet WithChange(QuorumRequest change) => new(Sequence, PreviousHash, Threshold, Officers, change);

    /// <summary>The officer with this key fingerprint, or null.</summary>
    public Officer? Find(string fingerprint) => Officers.FirstOrDefault(o => o.Fingerprint == fingerprint);

    /// <summary>
    /// The canonical text the hash covers: <c>kms officer set v1</c>, <c>sequence: N</c>,
    /// <c>previous: hash</c>, <c>threshold: M</c>, then <c>officer: fingerprint name</c> per
    /// officer in fingerprint order; LF after every line.
    /// </summary>
    public string Render()
    {
        var text = new StringBuilder(FormatTag).Append('\n');
        text.Append(CultureInfo.InvariantCulture, $"sequence: {Sequence}\n");
        text.Append(CultureInfo.InvariantCulture, $"previous: {PreviousHash}\n");
        text.Append(CultureInfo.InvariantCulture, $"threshold: {Threshold}\n");
        foreach (var officer in Officers)
        {
            text.Append(CultureInfo.InvariantCulture, $"officer: {officer.Fingerprint} {QuorumRendering.Escape(officer.Name)}\n");
        }

        return text.ToString();
    }

    /// <summary>
    /// The parameters of the CHANGE_OFFICERS request that installs this set: its hash, sequence
    /// and threshold and each officer (<c>new-officer:fingerprint</c> = name), so an officer
    /// sees the whole proposed set in the text they sign.
    /// </summary>
    public IReadOnlyList<KeyValuePair<string, string>> ChangeParameters() =>
        Officers.Select(o => KeyValuePair.Create("new-officer:" + o.Fingerprint, o.Name))
            .Append(KeyValuePair.Create("new-sequence", Sequence.ToString(CultureInfo.InvariantCulture)))
            .Append(KeyValuePair.Create("new-set-sha256", Hash))
            .Append(KeyValuePair.Create("new-threshold", Threshold.ToString(CultureInfo.InvariantCulture)))
            .OrderBy(p => p.Key, StringComparer.Ordinal)
            .ToList();

    private static OfficerSet Create(long sequence, string previousHash, IEnumerable<Officer> officers, int threshold, QuorumRequest? change, string fieldPrefix = "")
    {
        ArgumentNullException.ThrowIfNull(officers);
        var list = officers.OrderBy(o => o.Fingerprint, StringComparer.Ordinal).ToList();
        if (list.Count == 0 || list.Count > MaxOfficers)
        {
            throw KmsErrors.InvalidArgument(fieldPrefix + "officers", $"an officer set has 1 to {MaxOfficers} officers");
        }

        if (list.Select(o => o.Fingerprint).Distinct(StringComparer.Ordinal).Count() != list.Count)
        {
            throw KmsErrors.InvalidArgument(fieldPrefix + "officers", "the same public key is listed twice; each officer needs a key of their own");
        }

        if (list.Select(o => o.Name).Distinct(StringComparer.OrdinalIgnoreCase).Count() != list.Count)
        {
            throw KmsErrors.InvalidArgument(fieldPrefix + "officers", "two officers have the same name; names must tell officers apart");
        }

        if (threshold < 1 || threshold > list.Count)
        {
            throw KmsErrors.InvalidArgument(fieldPrefix + "threshold", $"must be from 1 to the number of officers ({list.Count}), got {threshold}");
        }

        if (sequence < 0 || !Officer.IsFingerprint(previousHash))
        {
            throw KmsErrors.InvalidArgument("officers", "a set needs a sequence from 0 and the previous set's hash");
        }

        return new OfficerSet(sequence, previousHash, threshold, list, change);
    }
}
