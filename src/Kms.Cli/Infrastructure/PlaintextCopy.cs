using System.Buffers;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// Copies a stream that carries plaintext into another through a buffer cleared before it goes
/// back to its pool. <see cref="Stream.CopyToAsync(Stream, CancellationToken)"/> rents from
/// <see cref="ArrayPool{T}.Shared"/> and returns the array as it is, so the last chunk copied
/// stayed in the process's shared pool for the next renter to find.
/// </summary>
internal static class PlaintextCopy
{
    // As Stream.CopyToAsync's; the pool hands out 128 KiB for it, more than FileStream's 80 KiB
    // buffer, so a file source reads straight into this buffer, not through one of its own.
    private const int BufferSize = 81920;

    /// <summary>Copies the rest of <paramref name="source"/> to <paramref name="destination"/>; the buffer, rented from <paramref name="pool"/>, goes back cleared even when the copy fails.</summary>
    public static async Task CopyAsync(Stream source, Stream destination, ArrayPool<byte> pool, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(pool);
        var buffer = pool.Rent(BufferSize);
        try
        {
            int read;
            while ((read = await source.ReadAsync(buffer, cancellationToken)) > 0)
            {
                await destination.WriteAsync(buffer.AsMemory(0, read), cancellationToken);
            }
        }
        finally
        {
            pool.Return(buffer, clearArray: true);
        }
    }
}
