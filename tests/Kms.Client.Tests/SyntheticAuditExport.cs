using System.Security.Cryptography;
using System.Text;

namespace Kms.Client.Tests;

/// <summary>
/// A valid audit export generated as it is read, never held whole: a header anchored at
/// genesis, then <c>events</c> chained events with a checkpoint signed by <c>key</c> after every
/// <c>checkpointEvery</c>-th — written <c>checkpointDelay</c> events late (0: right after its
/// event, as the server writes it). Can sample the managed heap as given events are reached.
/// With <c>restart</c>, a SIEM stream's restart line after event <c>At</c> that goes on after
/// event <c>After</c>, then the same events after it again (checkpoints delayed 0 only).
/// </summary>
internal sealed class SyntheticAuditExport(ECDsa key, long events, long checkpointEvery, long checkpointDelay = 0, (long At, long After)? restart = null, params long[] sampleHeapAt) : TextReader
{
    private string? _afterHash;
    private bool _restarted;

    private readonly string _fingerprint = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(key.ExportSubjectPublicKeyInfo()));
    private readonly Queue<string> _pending = new();
    private readonly Queue<(long Sequence, string Line)> _checkpoints = new();
    private long _next;
    private string _previous = new('0', 64);
    private string _current = "";
    private int _position;

    /// <summary>GC.GetTotalMemory(true) when the reader was first asked for more after each sampled event.</summary>
    public Dictionary<long, long> HeapAt { get; } = [];

    public override string? ReadLine()
    {
        if (_position == _current.Length && !NextLine())
        {
            return null;
        }

        var rest = _current[_position..].TrimEnd('\n');
        _position = _current.Length;
        return rest;
    }

    public override int Read(char[] buffer, int index, int count)
    {
        if (_position == _current.Length && !NextLine())
        {
            return 0;
        }

        var n = Math.Min(count, _current.Length - _position);
        _current.CopyTo(_position, buffer, index, n);
        _position += n;
        return n;
    }

    public override int Read() => throw new NotSupportedException("read in blocks or lines");

    private bool NextLine()
    {
        if (_pending.Count == 0 && !Generate())
        {
            return false;
        }

        (_current, _position) = (_pending.Dequeue() + "\n", 0);
        return true;
    }

    private bool Generate()
    {
        if (_next == 0)
        {
            _pending.Enqueue($"{{\"kms_audit_export\":1,\"key\":\"{_fingerprint}\",\"anchor\":{{\"seq\":0,\"hash\":\"{_previous}\"}}}}");
            _next = 1;
            return true;
        }

        if (Array.IndexOf(sampleHeapAt, _next - 1) >= 0 && !HeapAt.ContainsKey(_next - 1))
        {
            HeapAt[_next - 1] = GC.GetTotalMemory(forceFullCollection: true);
        }

        if (_next > events)
        {
            while (_checkpoints.Count > 0)
            {
                _pending.Enqueue(_checkpoints.Dequeue().Line);
            }

            return _pending.Count > 0;
        }

        var sequence = _next++;
        var body = $"{{\"v\":1,\"seq\":{sequence},\"prev\":\"{_previous}\",\"time\":\"2026-11-29T12:00:00.000Z\",\"principal\":\"token:alice\",\"operation\":\"/kms.v1.KeyManagementService/Encrypt\",\"resource\":\"tenants/dev/keys/k\",\"outcome\":\"OK\"}}";
        _previous = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(body)));
        _pending.Enqueue($"{{\"event\":{body},\"hash\":\"{_previous}\"}}");
        if (sequence % checkpointEvery == 0)
        {
            var checkpoint = $"{{\"v\":1,\"type\":\"checkpoint\",\"seq\":{sequence},\"head\":\"{_previous}\",\"time\":\"2026-11-29T12:00:00.000Z\",\"key\":\"{_fingerprint}\"}}";
            var signature = key.SignHash(SHA256.HashData(Encoding.UTF8.GetBytes(checkpoint)));
            _checkpoints.Enqueue((sequence, $"{{\"checkpoint\":{checkpoint},\"signature\":\"{Convert.ToBase64String(signature)}\"}}"));
        }

        while (_checkpoints.Count > 0 && _checkpoints.Peek().Sequence + checkpointDelay <= sequence)
        {
            _pending.Enqueue(_checkpoints.Dequeue().Line);
        }

        if (restart is { } r && !_restarted)
        {
            _afterHash = sequence == r.After ? _previous : _afterHash;
            if (sequence == r.At && _afterHash is { } after)
            {
                _pending.Enqueue($"{{\"stream_restart\":{{\"after\":{{\"seq\":{r.After},\"hash\":\"{after}\"}},\"replaced\":{{\"seq\":{sequence},\"hash\":\"{_previous}\"}}}}}}");
                (_next, _previous, _restarted) = (r.After + 1, after, true);
            }
        }

        return true;
    }
}
