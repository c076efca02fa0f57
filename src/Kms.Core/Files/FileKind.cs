using System.Runtime.InteropServices;

namespace Kms.Core.Files;

/// <summary>What a path names, found without opening it.</summary>
/// <remarks>
/// .NET tells a directory from a file but not a regular file from a FIFO, a device or a socket:
/// <see cref="File.Exists(string)"/> is true of all of them, and their length is 0. Opening one to
/// find out is what must not happen: <c>open(2)</c> for reading waits, on a FIFO, until something
/// opens it for writing, and a device reads without end. On Linux, <c>statx(2)</c> (following
/// symbolic links, as an open would) gives the type; elsewhere, or where the C library lacks it,
/// nothing is known and the caller goes on as before.
/// </remarks>
public static partial class FileKind
{
    private const int CurrentDirectory = -100; // AT_FDCWD
    private const uint TypeMask = 0x1; // STATX_TYPE
    private const int ModeOffset = 28; // struct statx: stx_mode (u16) after stx_mask, stx_blksize, stx_attributes, stx_nlink, stx_uid, stx_gid
    private const int FormatBits = 0xF000; // S_IFMT
    private const int Regular = 0x8000; // S_IFREG
    private const int DirectoryType = 0x4000; // S_IFDIR

    /// <summary>
    /// True when <paramref name="path"/> names something that is neither a regular file nor a
    /// directory (a FIFO, a character or block device, a socket); false for those, for nothing
    /// there, and when it cannot be told.
    /// </summary>
    public static bool IsSpecial(string path)
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        var buffer = new byte[256]; // sizeof(struct statx)
        int result;
        try
        {
            unsafe
            {
                fixed (byte* statx = buffer)
                {
                    result = Statx(CurrentDirectory, path, 0, TypeMask, statx);
                }
            }
        }
        catch (EntryPointNotFoundException)
        {
            return false; // a C library without statx: not known, as elsewhere
        }

        // The kernel's struct, in the machine's byte order: stx_mask first, what it filled in.
        if (result != 0 || (MemoryMarshal.Read<uint>(buffer) & TypeMask) == 0)
        {
            return false; // nothing there, or not readable: the open says which, as before
        }

        var format = MemoryMarshal.Read<ushort>(buffer.AsSpan(ModeOffset)) & FormatBits;
        return format is not Regular and not DirectoryType;
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int Statx(int directory, string path, int flags, uint mask, byte* buffer);
}
