using System.Runtime.InteropServices;

namespace Kms.Core.Files;

/// <summary>
/// Gives a file or a directory its final name only if nothing has that name, in one step of the
/// file system: of two writers publishing the same name at once, exactly one succeeds.
/// </summary>
/// <remarks>
/// <para><see cref="File.Move(string, string, bool)"/> without overwrite checks that the name is
/// free and then <c>rename(2)</c>s, which replaces what appeared in between: two writers both see
/// the name free, both rename, the second replaces the first's file, and both are told they wrote
/// it. <see cref="Directory.Move"/> does the same for a directory, and <c>rename(2)</c> replaces
/// an empty directory (it refuses only one that holds something): a directory committed empty,
/// or created empty meanwhile, is replaced by the second commit, both told "written".</para>
/// <para>On Linux, <c>renameat2(2)</c> with <c>RENAME_NOREPLACE</c> (the kernel refuses with
/// <c>EEXIST</c>). Where the file system or C library lacks it, a file is published with
/// <c>link(2)</c>, which also refuses an existing name, and its temporary name is then removed; on
/// macOS too. Windows' move without replace is atomic already. Only a file system that has neither
/// (FAT on Linux: no hard links and no <c>RENAME_NOREPLACE</c>) falls back to the check and
/// rename, where the race remains.</para>
/// <para>A directory (<see cref="MoveDirectory"/>) cannot be hard-linked: where
/// <c>renameat2(2)</c> is missing, it is renamed with plain <c>rename(2)</c> after a check, which
/// refuses a name that holds a file or a directory with anything in it, and replaces only an
/// empty directory that appeared between the check and the rename (nothing in it is lost, but
/// whoever made it is not told).</para>
/// </remarks>
internal static partial class NoReplaceRename
{
    private const int CurrentDirectory = -100; // AT_FDCWD
    private const uint NoReplace = 1; // RENAME_NOREPLACE
    private const int NotPermitted = 1; // EPERM, on both: link(2) on a file system without hard links
    private const int Interrupted = 4; // EINTR, on both
    private const int Exists = 17; // EEXIST, on both
    private const int Invalid = 22; // EINVAL: the file system does not support RENAME_NOREPLACE
    private const int LinuxNoSystemCall = 38; // ENOSYS
    private const int LinuxNotSupported = 95; // EOPNOTSUPP (ENOTSUP)
    private const int MacNotSupported = 45; // ENOTSUP
    private const int LinuxNotEmpty = 39; // ENOTEMPTY
    private const int MacNotEmpty = 66; // ENOTEMPTY

    /// <summary>What one way of publishing did.</summary>
    internal enum Outcome
    {
        /// <summary>The source has the final name now (and no longer its own).</summary>
        Moved,

        /// <summary>The final name was taken: nothing changed.</summary>
        Exists,

        /// <summary>This way is not available here: nothing changed, try another.</summary>
        Unsupported,
    }

    /// <summary>Renames the file <paramref name="source"/> to <paramref name="destination"/> unless that exists (a directory: <see cref="MoveDirectory"/>).</summary>
    /// <exception cref="IOException"><paramref name="destination"/> exists (<c>"{destination} exists already"</c>), or the file cannot be renamed.</exception>
    public static void MoveFile(string source, string destination)
    {
        var outcome = Rename(source, destination);
        if (outcome == Outcome.Unsupported && !OperatingSystem.IsWindows())
        {
            outcome = Link(source, destination);
        }

        switch (outcome)
        {
            case Outcome.Moved:
                return;
            case Outcome.Exists:
                throw new IOException($"{destination} exists already");
            default:
                // Windows (whose move without replace is atomic), or neither way on this file system.
                if (File.Exists(destination) || Directory.Exists(destination))
                {
                    throw new IOException($"{destination} exists already");
                }

                File.Move(source, destination, overwrite: false);
                return;
        }
    }

    /// <summary>Renames the directory <paramref name="source"/> to <paramref name="destination"/> unless that exists.</summary>
    /// <exception cref="IOException"><paramref name="destination"/> exists (<c>"{destination} exists already"</c>), or the directory cannot be renamed.</exception>
    public static void MoveDirectory(string source, string destination)
    {
        var outcome = Rename(source, destination);
        if (outcome == Outcome.Unsupported)
        {
            if (File.Exists(destination) || Directory.Exists(destination))
            {
                throw new IOException($"{destination} exists already");
            }

            outcome = OperatingSystem.IsWindows() ? MoveOnWindows(source, destination) : RenameDirectory(source, destination);
        }

        if (outcome == Outcome.Exists)
        {
            throw new IOException($"{destination} exists already");
        }
    }

    /// <summary>
    /// <c>rename(2)</c> of a directory, the fallback without <c>renameat2(2)</c>: refuses (as
    /// <see cref="Outcome.Exists"/>) a destination directory that holds anything; replaces an empty one.
    /// </summary>
    /// <exception cref="IOException">Another error (the source is gone, the destination is a file, no permission, …).</exception>
    internal static Outcome RenameDirectory(string source, string destination)
    {
        int error;
        do
        {
            error = RenameFile(source, destination) == 0 ? 0 : Marshal.GetLastPInvokeError();
        }
        while (error == Interrupted);

        return error switch
        {
            0 => Outcome.Moved,
            Exists or LinuxNotEmpty when OperatingSystem.IsLinux() => Outcome.Exists,
            Exists or MacNotEmpty when !OperatingSystem.IsLinux() => Outcome.Exists,
            _ => throw Failure("rename", source, destination, error),
        };
    }

    // Windows' move of a directory refuses an existing destination in the same step.
    private static Outcome MoveOnWindows(string source, string destination)
    {
        Directory.Move(source, destination);
        return Outcome.Moved;
    }

    /// <summary><c>renameat2(RENAME_NOREPLACE)</c>; <see cref="Outcome.Unsupported"/> off Linux, or where the kernel, the C library or the file system lacks it.</summary>
    /// <exception cref="IOException">Another error (the source is gone, no permission, …).</exception>
    internal static Outcome Rename(string source, string destination)
    {
        if (!OperatingSystem.IsLinux())
        {
            return Outcome.Unsupported;
        }

        int error;
        try
        {
            do
            {
                error = RenameAt2(CurrentDirectory, source, CurrentDirectory, destination, NoReplace) == 0 ? 0 : Marshal.GetLastPInvokeError();
            }
            while (error == Interrupted);
        }
        catch (EntryPointNotFoundException)
        {
            return Outcome.Unsupported; // a C library older than glibc 2.28, or without the wrapper
        }

        return error switch
        {
            0 => Outcome.Moved,
            Exists => Outcome.Exists,
            Invalid or LinuxNoSystemCall or LinuxNotSupported => Outcome.Unsupported,
            _ => throw Failure("rename", source, destination, error),
        };
    }

    /// <summary>
    /// <c>link(2)</c>, then the source's name removed; <see cref="Outcome.Unsupported"/> on Windows
    /// or a file system without hard links. Between the two steps the file has both names; a crash
    /// there leaves the source's (a temporary name) beside the final one, which is whole.
    /// </summary>
    /// <exception cref="IOException">Another error (the source is gone, no permission, …).</exception>
    internal static Outcome Link(string source, string destination)
    {
        if (OperatingSystem.IsWindows())
        {
            return Outcome.Unsupported;
        }

        int error;
        do
        {
            error = LinkFile(source, destination) == 0 ? 0 : Marshal.GetLastPInvokeError();
        }
        while (error == Interrupted);

        switch (error)
        {
            case 0:
                // The file is published; its second name is only a leftover, never a failure.
                DurableFile.TryDelete(source);
                return Outcome.Moved;
            case Exists:
                return Outcome.Exists;
            case NotPermitted or LinuxNotSupported or MacNotSupported:
                return Outcome.Unsupported;
            default:
                throw Failure("link", source, destination, error);
        }
    }

    private static IOException Failure(string call, string source, string destination, int error) =>
        new($"cannot {call} {source} to {destination}: {Marshal.GetPInvokeErrorMessage(error)} (errno {error})");

    [LibraryImport("libc", EntryPoint = "renameat2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int RenameAt2(int sourceDirectory, string source, int destinationDirectory, string destination, uint flags);

    [LibraryImport("libc", EntryPoint = "rename", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int RenameFile(string source, string destination);

    [LibraryImport("libc", EntryPoint = "link", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int LinkFile(string source, string destination);
}
