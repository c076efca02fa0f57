using System.Collections;
using System.Text.RegularExpressions;
using Kms.Core.Errors;

namespace Kms.Core.Keys;

/// <summary>
/// Free-form labels on a key, validated like Google Cloud labels: at most 64; keys 1 to 63
/// of <c>[a-z0-9_-]</c> starting with a letter; values at most 63 of <c>[a-z0-9_-]</c>.
/// </summary>
public sealed partial class KeyLabels : IReadOnlyDictionary<string, string>
{
    private readonly SortedDictionary<string, string> _labels;

    private KeyLabels(SortedDictionary<string, string> labels) => _labels = labels;

    /// <summary>No labels.</summary>
    public static KeyLabels Empty { get; } = new(new SortedDictionary<string, string>(StringComparer.Ordinal));

    /// <summary>Validates labels from a request.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static KeyLabels Create(IEnumerable<KeyValuePair<string, string>>? labels, string field = "key.labels")
    {
        var sorted = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, value) in labels ?? [])
        {
            if (!LabelKey().IsMatch(key))
            {
                throw KmsErrors.InvalidArgument(field, "a label key is 1 to 63 of [a-z0-9_-], starting with a letter");
            }

            if (!LabelValue().IsMatch(value))
            {
                throw KmsErrors.InvalidArgument(field, $"the value of label '{key}' must be at most 63 of [a-z0-9_-]");
            }

            sorted[key] = value;
        }

        if (sorted.Count > Limits.MaxLabels)
        {
            throw KmsErrors.InvalidArgument(field, $"at most {Limits.MaxLabels} labels");
        }

        return new KeyLabels(sorted);
    }

    /// <inheritdoc />
    public string this[string key] => _labels[key];

    /// <inheritdoc />
    public IEnumerable<string> Keys => _labels.Keys;

    /// <inheritdoc />
    public IEnumerable<string> Values => _labels.Values;

    /// <inheritdoc />
    public int Count => _labels.Count;

    /// <inheritdoc />
    public bool ContainsKey(string key) => _labels.ContainsKey(key);

    /// <inheritdoc />
    public bool TryGetValue(string key, out string value) => _labels.TryGetValue(key, out value!);

    /// <inheritdoc />
    public IEnumerator<KeyValuePair<string, string>> GetEnumerator() => _labels.GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>True when both hold the same labels.</summary>
    public bool SetEquals(KeyLabels other) =>
        Count == other.Count && _labels.All(kv => other.TryGetValue(kv.Key, out var v) && v == kv.Value);

    [GeneratedRegex("^[a-z][a-z0-9_-]{0,62}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex LabelKey();

    [GeneratedRegex("^[a-z0-9_-]{0,63}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex LabelValue();
}
