namespace Kms.Fuzz;

/// <summary>
/// One parser of untrusted bytes under fuzzing. <see cref="Run"/> feeds it one input and
/// returns when the parser accepted it or refused it with its documented exception; any other
/// exception, or a broken <see cref="FuzzContractException">property</see>, is a crash for AFL.
/// </summary>
internal abstract class FuzzTarget
{
    /// <summary>The name given on the command line.</summary>
    public abstract string Name { get; }

    /// <summary>What is fuzzed and what counts as a documented refusal (for <c>list</c>).</summary>
    public abstract string Description { get; }

    /// <summary>Feeds one input to the parser.</summary>
    public abstract void Run(byte[] input);

    /// <summary>Valid inputs made by the real encoders (and the repository's golden vectors), as AFL's starting corpus.</summary>
    public abstract IEnumerable<(string Name, byte[] Bytes)> Seeds();
}

/// <summary>A parser accepted an input but broke a property it promises (a round trip, a canonical form).</summary>
internal sealed class FuzzContractException(string message) : Exception(message);
