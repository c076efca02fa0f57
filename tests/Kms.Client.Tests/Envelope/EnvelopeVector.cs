using System.Text.Json;
using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// One vector of an envelope golden-vector file in vectors/ (envelope-v1.json, envelope-signed.json:
/// both written once by the independent Python implementation, generate_envelope.py): the fields
/// every envelope vector has, read; a file's own (a v1 vector's error, a signed one's key pair)
/// through <see cref="Text"/> and <see cref="Hex"/>.
/// </summary>
internal sealed record EnvelopeVector(
    byte[] DataKey,
    byte[] MessageId,
    Dictionary<string, string> Context,
    List<WrappedDataKey> Wrapped,
    int FrameLength,
    byte[] Plaintext,
    byte[] Message,
    byte[] AssociatedData,
    StaticKeyProvider Provider,
    EnvelopeOptions Options,
    JsonElement Json)
{
    /// <summary>The descriptions of the file's valid, or invalid, vectors, in the file's order.</summary>
    public static List<string> Descriptions(string file, bool valid)
    {
        using var document = Document(file);
        return [.. document.RootElement.GetProperty("vectors").EnumerateArray()
            .Where(vector => vector.GetProperty("valid").GetBoolean() == valid)
            .Select(vector => vector.GetProperty("description").GetString()!)];
    }

    /// <summary>The vector of the file with this description.</summary>
    public static EnvelopeVector Load(string file, string description)
    {
        using var document = Document(file);
        var json = document.RootElement.GetProperty("vectors").EnumerateArray().Single(v => v.GetProperty("description").GetString() == description).Clone();
        var dataKey = Convert.FromHexString(json.GetProperty("data_key").GetString()!);
        var wrapped = json.GetProperty("wrapped_keys").EnumerateArray()
            .Select(k => new WrappedDataKey(k.GetProperty("key_name").GetString()!, Convert.FromHexString(k.GetProperty("wrapped").GetString()!)))
            .ToList();
        var frameLength = json.GetProperty("frame_length").GetInt32();
        return new EnvelopeVector(
            dataKey,
            Convert.FromHexString(json.GetProperty("message_id").GetString()!),
            json.GetProperty("context").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!, StringComparer.Ordinal),
            wrapped,
            frameLength,
            Convert.FromHexString(json.GetProperty("plaintext").GetString()!),
            Convert.FromHexString(json.GetProperty("message").GetString()!),
            Convert.FromHexString(json.GetProperty("associated_data").GetString()!),
            new StaticKeyProvider(dataKey, wrapped),
            new EnvelopeOptions { KeyNames = [.. wrapped.Select(k => k.KeyName)], FrameLength = frameLength },
            json);
    }

    /// <summary>A text field of this vector.</summary>
    public string Text(string name) => Json.GetProperty(name).GetString()!;

    /// <summary>A hex field of this vector, as bytes.</summary>
    public byte[] Hex(string name) => Convert.FromHexString(Text(name));

    private static JsonDocument Document(string file) =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "vectors", file)));
}
