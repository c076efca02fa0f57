using System.Diagnostics;
using System.Globalization;
using System.IO.Pipelines;
using System.Security.Cryptography;
using Kms.Client.Envelope;

namespace Kms.Bench;

/// <summary>
/// Streams N MiB through envelope encryption and straight into decryption (a pipe between
/// them, nothing stored), checks the SHA-256 of what comes out, and reports the process's
/// resident memory above the level just before, sampled every 20 ms. The same harness with a
/// plain copy instead of encryption runs first as the baseline: what the pipe, the thread pool
/// and the runtime cost on their own.
/// </summary>
internal static class EnvelopeStreamBench
{
    public static async Task<int> RunAsync(int mebibytes)
    {
        using var encryptor = new EnvelopeEncryptor(new LocalKeyProvider(), new EnvelopeOptions { KeyNames = ["tenants/bench/keys/stream"] });

        // Warm up past tiered compilation (tier-1 code and the JIT itself are resident memory too).
        for (var round = 0; round < 4; round++)
        {
            await RoundTripAsync(encryptor, 64);
            await RoundTripAsync(null, 64);
            await Task.Delay(300);
        }

        // The first large run of either kind grows the process once (GC regions, thread-pool
        // threads) and that memory stays: each is measured first and second, in both orders.
        var firstEnvelope = await MeasureAsync(encryptor, mebibytes);
        var firstCopy = await MeasureAsync(null, mebibytes);
        var envelope = await MeasureAsync(encryptor, mebibytes);
        var copy = await MeasureAsync(null, mebibytes);
        Console.WriteLine($"envelope encrypt -> decrypt (first large run in the process): {firstEnvelope.Report}");
        Console.WriteLine($"plain copy (baseline):                                      {firstCopy.Report}");
        Console.WriteLine($"envelope encrypt -> decrypt (again):                        {envelope.Report}");
        Console.WriteLine($"plain copy (baseline, again):                               {copy.Report}");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"envelope peak above the level before it: {firstEnvelope.AboveMiB:F1} MiB first, {envelope.AboveMiB:F1} MiB again (plain copy: {copy.AboveMiB:F1} MiB); throughput {envelope.MiBPerSecond / copy.MiBPerSecond:F2}x the copy"));
        return firstEnvelope.Identical && envelope.Identical ? 0 : 1;
    }

    private static async Task<Measurement> MeasureAsync(EnvelopeEncryptor? encryptor, int mebibytes)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        using var process = Process.GetCurrentProcess();
        process.Refresh();
        var before = process.WorkingSet64;
        var peak = before;
        using var sampling = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!sampling.IsCancellationRequested)
            {
                process.Refresh();
                peak = Math.Max(peak, process.WorkingSet64);
                await Task.Delay(20).ConfigureAwait(false);
            }
        });

        var allocatedBefore = GC.GetTotalAllocatedBytes();
        var watch = Stopwatch.StartNew();
        var (inHash, outHash, bytes) = await RoundTripAsync(encryptor, mebibytes);
        watch.Stop();
        await sampling.CancelAsync();
        await sampler;
        var allocated = GC.GetTotalAllocatedBytes() - allocatedBefore;

        var identical = inHash.AsSpan().SequenceEqual(outHash);
        var above = (peak - before) / 1024.0 / 1024.0;
        var speed = bytes / (1024.0 * 1024.0) / watch.Elapsed.TotalSeconds;
        var report = string.Create(CultureInfo.InvariantCulture,
            $"{bytes >> 20} MiB in {watch.Elapsed.TotalSeconds:F1} s ({speed:F0} MiB/s), output {(identical ? "identical" : "DIFFERENT")}; "
            + $"resident {before >> 20} MiB before, peak {peak >> 20} MiB (+{above:F1} MiB); managed allocations {allocated / 1024.0 / 1024.0:F1} MiB, server GC {System.Runtime.GCSettings.IsServerGC}");
        return new Measurement(identical, above, speed, report);
    }

    private static async Task<(byte[] In, byte[] Out, long Bytes)> RoundTripAsync(EnvelopeEncryptor? encryptor, int mebibytes)
    {
        // Large segments, little buffered: the harness should not be what the memory figure measures.
        var pipe = new Pipe(new PipeOptions(minimumSegmentSize: 128 * 1024, pauseWriterThreshold: 256 * 1024, resumeWriterThreshold: 128 * 1024));
        var source = new PatternStream((long)mebibytes << 20);
        var sink = new HashingSink();
        var writer = Task.Run(async () =>
        {
            await using var toPipe = pipe.Writer.AsStream();
            if (encryptor is null)
            {
                await source.CopyToAsync(toPipe, 64 * 1024);
            }
            else
            {
                await encryptor.EncryptAsync(source, toPipe);
            }
        });
        var reader = Task.Run(async () =>
        {
            await using var fromPipe = pipe.Reader.AsStream();
            if (encryptor is null)
            {
                await fromPipe.CopyToAsync(sink, 64 * 1024);
            }
            else
            {
                await encryptor.DecryptAsync(fromPipe, sink, EnvelopeEncryptor.NoContext);
            }
        });
        await Task.WhenAll(writer, reader);
        return (source.Hash(), sink.Hash(), sink.Length);
    }

    private sealed record Measurement(bool Identical, double AboveMiB, double MiBPerSecond, string Report);

    /// <summary>A non-seekable source of pseudo-random bytes, hashed as they are read (never held).</summary>
    private sealed class PatternStream(long length) : Stream
    {
        private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        private long _position;
        private uint _state = 2463534242;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position
        {
            get => throw new NotSupportedException();
            set => throw new NotSupportedException();
        }

        public byte[] Hash() => _hash.GetHashAndReset();

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            var n = (int)Math.Min(buffer.Length, length - _position);
            for (var i = 0; i < n; i++)
            {
                _state ^= _state << 13;
                _state ^= _state >> 17;
                _state ^= _state << 5;
                buffer[i] = (byte)_state;
            }

            _hash.AppendData(buffer[..n]);
            _position += n;
            return n;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    /// <summary>A write-only sink that hashes and counts what it is given.</summary>
    private sealed class HashingSink : Stream
    {
        private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        private long _length;

        public override bool CanRead => false;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => _length;

        public override long Position
        {
            get => _length;
            set => throw new NotSupportedException();
        }

        public byte[] Hash() => _hash.GetHashAndReset();

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            _hash.AppendData(buffer);
            _length += buffer.Length;
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Write(buffer.Span);
            return ValueTask.CompletedTask;
        }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
