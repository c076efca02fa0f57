using System.Text;
using System.Text.Json;
using Kms.Core.Errors;
using Kms.Core.Files;

namespace Kms.Core.Quorum;

/// <summary>
/// The genesis officer set as a file: written by the key ceremony, kept with its transcript,
/// and named in the server's configuration (<c>Kms:Quorum:GenesisFile</c>) so that the root
/// of the officer chain is pinned outside the database.
/// </summary>
/// <remarks>
/// JSON: <c>{"format":"kms-officer-genesis-v1","previous_hash":"64 hex","threshold":M,"officers":[{"name":…,"public_key":"base64 DER SPKI","fingerprint":"hex"}],"sha256":"set hash"}</c>.
/// Reading recomputes every fingerprint and the set's hash and refuses the file if any
/// differs, or if the format is not this one. <c>previous_hash</c> is the genesis set's
/// "previous" line: the deployment's own random value (<see cref="OfficerSet.CreateDeploymentGenesis"/>);
/// a file without it (written before it existed) has 64 zeros there.
/// </remarks>
public static class GenesisFile
{
    /// <summary>The format tag of the file.</summary>
    public const string Format = "kms-officer-genesis-v1";

    private static readonly JsonWriterOptions Indented = new() { Indented = true };

    /// <summary>The file's JSON text for a genesis set.</summary>
    /// <exception cref="ArgumentException">The set is not a genesis (sequence 0).</exception>
    public static string Serialize(OfficerSet genesis)
    {
        ArgumentNullException.ThrowIfNull(genesis);
        if (genesis.Sequence != 0)
        {
            throw new ArgumentException("only a genesis set (sequence 0) is written as a genesis file", nameof(genesis));
        }

        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, Indented))
        {
            w.WriteStartObject();
            w.WriteString("format", Format);
            w.WriteString("previous_hash", genesis.PreviousHash);
            w.WriteNumber("threshold", genesis.Threshold);
            w.WriteStartArray("officers");
            foreach (var officer in genesis.Officers)
            {
                w.WriteStartObject();
                w.WriteString("name", officer.Name);
                w.WriteString("public_key", Convert.ToBase64String(officer.PublicKey));
                w.WriteString("fingerprint", officer.Fingerprint);
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteString("sha256", genesis.Hash);
            w.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray()) + "\n";
    }

    /// <summary>Parses and checks a genesis file's text.</summary>
    /// <exception cref="KmsException">FailedPrecondition naming what is wrong with the file.</exception>
    public static OfficerSet Parse(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        try
        {
            using var document = JsonDocument.Parse(json);
            var root = document.RootElement;
            if (root.GetProperty("format").GetString() != Format)
            {
                throw Bad($"its format is not {Format}");
            }

            var officers = new List<Officer>();
            foreach (var entry in root.GetProperty("officers").EnumerateArray())
            {
                var officer = Officer.Create(entry.GetProperty("name").GetString()!, Convert.FromBase64String(entry.GetProperty("public_key").GetString()!));
                if (entry.TryGetProperty("fingerprint", out var fingerprint) && fingerprint.GetString() != officer.Fingerprint)
                {
                    throw Bad($"officer {officer.Name}'s fingerprint does not match its public key");
                }

                officers.Add(officer);
            }

            // A file written before genesis sets had a deployment's own value has none: zeros.
            var previous = root.TryGetProperty("previous_hash", out var value) ? value.GetString() ?? "" : OfficerSet.NoPrevious;
            if (!Officer.IsFingerprint(previous))
            {
                throw Bad("its previous_hash is not 64 lower-case hex digits");
            }

            var set = OfficerSet.Restore(0, previous, officers, root.GetProperty("threshold").GetInt32(), null);
            if (root.GetProperty("sha256").GetString() != set.Hash)
            {
                throw Bad($"its sha256 does not match its officers and threshold (computed {set.Hash})");
            }

            return set;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw Bad("it is not a genesis file: " + e.Message);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.InvalidArgument)
        {
            throw Bad(e.Message);
        }
    }

    /// <summary>
    /// Writes a genesis file, readable by all (it holds public keys only), through
    /// <see cref="DurableFile"/>: whole or not at all after a crash, on disk with its name once
    /// this returns. An existing file is never replaced: the genesis is the root the server pins.
    /// </summary>
    /// <exception cref="IOException"><paramref name="path"/> exists, or cannot be written.</exception>
    public static void Write(string path, OfficerSet genesis) =>
        DurableFile.Write(path, Encoding.UTF8.GetBytes(Serialize(genesis)), DurableFile.Public, overwrite: false);

    /// <summary>Reads and checks a genesis file.</summary>
    /// <exception cref="KmsException">FailedPrecondition naming what is wrong with the file.</exception>
    public static OfficerSet Read(string path) => Parse(File.ReadAllText(path));

    private static KmsException Bad(string reason) => KmsErrors.FailedPrecondition($"the officer genesis file is refused: {reason}");
}
