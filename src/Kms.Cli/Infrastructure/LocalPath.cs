namespace Kms.Cli.Infrastructure;

/// <summary>
/// A path a command was given, checked for what the command expects there before it is used, and
/// read with a failure that names it. .NET says "Access to the path '…' is denied." both for a
/// directory where a file is read and for a file the user may not read, which sends the user to
/// the permissions of a path that has none wrong; here a directory where a file is wanted (or a
/// file where a directory is) is a usage error (exit <see cref="ExitCodes.Usage"/>), and a path
/// the user may not read, or that is not there, is <see cref="ExitCodes.LocalIo"/>, each naming the
/// path and what was expected. Given the flag (<c>--officer</c>), the message names it before the
/// path: a command taking several paths says which one is wrong.
/// </summary>
internal static partial class LocalPath
{
    /// <summary>The full path of <paramref name="given"/>, a file to read, given by <paramref name="flag"/> (null: an argument, or a flag the caller names otherwise).</summary>
    /// <exception cref="CliUsageException">A directory is there.</exception>
    /// <exception cref="CliFailureException">Nothing is there, or the path cannot be looked up (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static string File(CliEnvironment environment, string given, string? flag = null)
    {
        ArgumentNullException.ThrowIfNull(environment);
        var path = environment.FullPath(given);
        if (System.IO.Directory.Exists(path))
        {
            throw new CliUsageException($"{Named(path, flag)} is a directory: give a file's path");
        }

        if (!System.IO.File.Exists(path))
        {
            // Not there, or a directory on the way may not be searched: opening it tells which
            // (nothing is there to open, so nothing is read).
            Read(path, p => System.IO.File.OpenHandle(p), flag).Dispose();
        }

        return path;
    }

    /// <summary>
    /// The full path of <paramref name="given"/>, a file that is read later, by another library
    /// (a PKCS#11 module, its configuration) or after a step that must not be taken for nothing
    /// (an import job): opened and closed here, so that one the user may not read is said so now.
    /// Not for a file that may be a pipe: opening a FIFO waits for its writer.
    /// </summary>
    /// <exception cref="CliUsageException">A directory is there.</exception>
    /// <exception cref="CliFailureException">Nothing is there, or the user may not read it (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static string Readable(CliEnvironment environment, string given, string? flag = null)
    {
        var path = File(environment, given, flag);
        Read(path, p => System.IO.File.OpenHandle(p), flag).Dispose();
        return path;
    }

    /// <summary>
    /// The full path of <paramref name="given"/>, a file read later (a share, an approval, a
    /// passphrase file), checked now without opening it: what the caller checks before work that
    /// must not be done for nothing (a ceremony's HSM or database steps). access(2) asks the kernel
    /// the question open(2) would (mode bits, ACLs, the process's capabilities) without opening,
    /// so a FIFO given for it is not opened early, which would wait for its writer or lose what
    /// the writer put in it.
    /// </summary>
    /// <exception cref="CliUsageException">A directory is there.</exception>
    /// <exception cref="CliFailureException">Nothing is there, or the user may not read it (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static string CheckReadable(CliEnvironment environment, string given, string? flag = null)
    {
        var path = File(environment, given, flag);
        RequireReadable(path, flag is null ? path : $"{flag} {path}");
        return path;
    }

    /// <summary>Refuses a file (<paramref name="path"/>, a full path that exists) the process may not read, without opening it; <paramref name="named"/> as the message names it.</summary>
    /// <exception cref="CliFailureException">The user may not read it (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static void RequireReadable(string path, string named)
    {
        if (!OperatingSystem.IsWindows() && Access(path, ReadOk) != 0 && System.Runtime.InteropServices.Marshal.GetLastPInvokeError() is PermissionDenied or NotPermitted)
        {
            throw NotReadable(named, new UnauthorizedAccessException($"access({path}, R_OK) was refused"));
        }
    }

    /// <summary>
    /// The full path of <paramref name="given"/>, a directory to read (<paramref name="existing"/>:
    /// that must be there) or to create, given by <paramref name="flag"/> (null: an argument).
    /// </summary>
    /// <exception cref="CliUsageException">A file is there.</exception>
    /// <exception cref="CliFailureException"><paramref name="existing"/>, and nothing is there (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static string Directory(CliEnvironment environment, string given, string? flag = null, bool existing = false)
    {
        ArgumentNullException.ThrowIfNull(environment);
        var path = environment.FullPath(given);
        if (System.IO.File.Exists(path))
        {
            throw new CliUsageException($"{Named(path, flag)} is a file: give a directory's path");
        }

        if (existing && !System.IO.Directory.Exists(path))
        {
            // Not there, or a directory on the way may not be searched: opening it tells which.
            _ = Read(path, p => System.IO.Directory.EnumerateFileSystemEntries(p).Any(), flag);
        }

        return path;
    }

    /// <summary>
    /// The full path of <paramref name="given"/>, which this command will create or replace (a
    /// checkpoint, a downloaded directory): checked before any work is done that a failed write
    /// would waste or leave half-recorded. Its directory must be there, and take a new entry from
    /// this process (a file is created there and deleted again to see). What is at the path itself
    /// is the caller's to check.
    /// </summary>
    /// <exception cref="CliUsageException">A file is where the directory should be.</exception>
    /// <exception cref="CliFailureException">The directory does not exist, or this process may not create entries in it (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static string Writable(CliEnvironment environment, string given, string? flag = null)
    {
        ArgumentNullException.ThrowIfNull(environment);
        var path = environment.FullPath(given);
        var directory = Path.GetDirectoryName(path) ?? throw new CliUsageException($"{Named(path, flag)} is the root directory");
        if (System.IO.File.Exists(directory))
        {
            throw new CliUsageException($"cannot write {Named(path, flag)}: {directory} is a file, not a directory");
        }

        try
        {
            System.IO.File.OpenHandle(
                Path.Combine(directory, $".kms-write-check-{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8))}"),
                FileMode.CreateNew, FileAccess.Write, FileShare.None, FileOptions.DeleteOnClose).Dispose();
        }
        catch (DirectoryNotFoundException exception)
        {
            throw new CliFailureException(ExitCodes.LocalIo, $"cannot write {Named(path, flag)}: the directory {directory} does not exist", exception);
        }
        catch (UnauthorizedAccessException exception)
        {
            throw new CliFailureException(ExitCodes.LocalIo, $"cannot write {Named(path, flag)}: permission denied in {directory}", exception);
        }
        catch (IOException exception) when (IsReadOnlyFileSystem(exception))
        {
            throw ReadOnlyFileSystem(Named(path, flag), directory, exception);
        }

        return path;
    }

    /// <summary>Creates the directory <paramref name="given"/> (by <paramref name="flag"/>) and its parents durably, if it is not there; its full path.</summary>
    /// <exception cref="CliUsageException">A file is there.</exception>
    /// <exception cref="CliFailureException">The user may not create it (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static string CreateDirectory(CliEnvironment environment, string given, string? flag = null)
    {
        var path = Directory(environment, given, flag);
        try
        {
            return Kms.Core.Files.DurableFile.CreateDirectory(path);
        }
        catch (UnauthorizedAccessException exception)
        {
            throw new CliFailureException(ExitCodes.LocalIo, $"cannot create the directory {Named(path, flag)}: permission denied", exception);
        }
        catch (IOException exception) when (IsReadOnlyFileSystem(exception))
        {
            throw new CliFailureException(ExitCodes.LocalIo, $"cannot create the directory {Named(path, flag)}: it is on a read-only filesystem", exception);
        }
    }

    /// <summary>
    /// Creates the directory <paramref name="given"/> (by <paramref name="flag"/>) as
    /// <see cref="CreateDirectory"/> does, and checks that this process can write a file there: a
    /// probe file is written through <see cref="Kms.Core.Files.DurableFile"/> (a temporary file,
    /// flushed, renamed, the directory synced — what a share file or a transcript goes through) and
    /// deleted again. For a command that writes there only after work a failed write would waste or
    /// leave to be undone (an HSM import, the custodians' passphrases).
    /// </summary>
    /// <exception cref="CliUsageException">A file is there.</exception>
    /// <exception cref="CliFailureException">It cannot be created, or no file can be written in it: permission denied, a read-only or a full filesystem (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static string WritableDirectory(CliEnvironment environment, string given, string? flag = null)
    {
        var path = CreateDirectory(environment, given, flag);
        ProbeWritable(path, flag);
        return path;
    }

    /// <summary>
    /// As <see cref="WritableDirectory"/>, without creating anything: for a directory created later
    /// (after a check that must leave nothing behind when it refuses), the probe is written in it if
    /// it exists, else in its nearest existing parent, where it would be created.
    /// </summary>
    /// <exception cref="CliUsageException">A file is there.</exception>
    /// <exception cref="CliFailureException">No file can be written there (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static string CheckWritableDirectory(CliEnvironment environment, string given, string? flag = null)
    {
        var path = Directory(environment, given, flag);
        var existing = path;
        while (!System.IO.Directory.Exists(existing) && Path.GetDirectoryName(existing) is { } parent)
        {
            existing = parent;
        }

        ProbeWritableNamed(existing, Named(path, flag));
        return path;
    }

    /// <summary>The probe of <see cref="WritableDirectory"/> in <paramref name="path"/>, a directory that exists (given by <paramref name="flag"/>).</summary>
    /// <exception cref="CliFailureException">No file can be written in it (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static void ProbeWritable(string path, string? flag = null) => ProbeWritableNamed(path, Named(path, flag));

    private static void ProbeWritableNamed(string path, string named)
    {
        if (ProbeFailure(path) is { } exception)
        {
            // One the filesystem refused is said as such; any other as it was thrown.
            if (WriteFailure(named, path, exception) is { } failure)
            {
                throw failure;
            }

            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(exception);
        }
    }

    /// <summary>
    /// What refuses a file written in <paramref name="directory"/> now (the probe of
    /// <see cref="WritableDirectory"/>, deleted again), or null when it took one: for a failure
    /// whose own words do not say the operating system's cause (SQLite's "disk I/O error").
    /// </summary>
    public static Exception? ProbeFailure(string directory)
    {
        var probe = Path.Combine(directory, $".kms-write-check-{Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8))}");
        try
        {
            Kms.Core.Files.DurableFile.Write(probe, [0], Kms.Core.Files.DurableFile.OwnerOnly, overwrite: false);
            return null;
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException)
        {
            return exception;
        }
        finally
        {
            try
            {
                System.IO.File.Delete(probe);
            }
            catch (Exception exception) when (exception is IOException or UnauthorizedAccessException)
            {
                // Not written, or the failure returned says why.
            }
        }
    }

    /// <summary>
    /// A write of <paramref name="named"/> (what was being written, with its flag or path) into
    /// <paramref name="directory"/> that the file system refused, said as what it is — permission
    /// denied (EACCES, EPERM), a read-only filesystem (EROFS), no space left (ENOSPC) — in place of
    /// .NET's message, which names a temporary file the user never gave; null for any other failure.
    /// </summary>
    public static CliFailureException? WriteFailure(string named, string directory, Exception exception) => exception switch
    {
        UnauthorizedAccessException => new(ExitCodes.LocalIo, $"cannot write {named}: permission denied in {directory}", exception),
        IOException io when IsReadOnlyFileSystem(io) => ReadOnlyFileSystem(named, directory, exception),
        IOException io when !OperatingSystem.IsWindows() && io.HResult == NoSpaceErrno => new(ExitCodes.LocalIo, $"cannot write {named}: no space left on the filesystem holding {directory}", exception),
        IOException io when !OperatingSystem.IsWindows() && io.HResult is PermissionDenied or NotPermitted => new(ExitCodes.LocalIo, $"cannot write {named}: permission denied in {directory}", exception),
        _ => null,
    };

    /// <summary>
    /// Runs <paramref name="read"/> on <paramref name="path"/> (a full path, given by
    /// <paramref name="flag"/>), saying a refusal to read it, or its absence, as such.
    /// </summary>
    /// <exception cref="CliFailureException">The user may not read the path, or it is not there (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static T Read<T>(string path, Func<string, T> read, string? flag = null)
    {
        ArgumentNullException.ThrowIfNull(read);
        try
        {
            return read(path);
        }
        catch (UnauthorizedAccessException exception)
        {
            throw NotReadable(Named(path, flag), exception);
        }
        catch (IOException exception) when (Missing(path, exception))
        {
            throw DoesNotExist(path, flag, exception);
        }
    }

    /// <summary>As <see cref="Read{T}(string, Func{string, T}, string)"/>, asynchronously.</summary>
    public static async Task<T> ReadAsync<T>(string path, Func<string, Task<T>> read, string? flag = null)
    {
        ArgumentNullException.ThrowIfNull(read);
        try
        {
            return await read(path);
        }
        catch (UnauthorizedAccessException exception)
        {
            throw NotReadable(Named(path, flag), exception);
        }
        catch (IOException exception) when (Missing(path, exception))
        {
            throw DoesNotExist(path, flag, exception);
        }
    }

    /// <summary>The text of the file <paramref name="given"/> (by <paramref name="flag"/>).</summary>
    public static string ReadAllText(CliEnvironment environment, string given, string? flag = null) =>
        Read(File(environment, given, flag), System.IO.File.ReadAllText, flag);

    /// <summary>The text of the file <paramref name="given"/> (by <paramref name="flag"/>).</summary>
    public static Task<string> ReadAllTextAsync(CliEnvironment environment, string given, string? flag, CancellationToken cancellationToken) =>
        ReadAsync(File(environment, given, flag), path => System.IO.File.ReadAllTextAsync(path, cancellationToken), flag);

    /// <summary>The failure of a path the process may not read: a file, or a directory to list; <paramref name="path"/> as the message names it (with its flag or setting).</summary>
    public static CliFailureException NotReadable(string path, Exception inner) =>
        new(ExitCodes.LocalIo, $"cannot read {path}: permission denied", inner);

    /// <summary>
    /// Whether <paramref name="exception"/> is EROFS: a write refused because the filesystem is
    /// mounted read-only. .NET has no type for it (it says "Read-only file system : '…'", naming a
    /// temporary file where one was being created); its <see cref="Exception.HResult"/> is the errno.
    /// </summary>
    public static bool IsReadOnlyFileSystem(IOException exception) =>
        !OperatingSystem.IsWindows() && exception?.HResult == ReadOnlyFileSystemErrno;

    /// <summary>The failure of a write into <paramref name="directory"/>, on a read-only filesystem; <paramref name="named"/> as the message names it (with its flag).</summary>
    public static CliFailureException ReadOnlyFileSystem(string named, string directory, Exception inner) =>
        new(ExitCodes.LocalIo, $"cannot write {named}: {directory} is on a read-only filesystem", inner);

    // EROFS: 30 on Linux, macOS and the BSDs; ENOSPC 28, EACCES 13 and EPERM 1 likewise; R_OK 4.
    private const int ReadOnlyFileSystemErrno = 30;
    private const int NoSpaceErrno = 28;
    private const int PermissionDenied = 13;
    private const int NotPermitted = 1;
    private const int ReadOk = 4;

    // A failure of the path itself (not of a file the reader looks for inside a directory given).
    private static bool Missing(string path, IOException exception) =>
        exception is FileNotFoundException or DirectoryNotFoundException && !System.IO.File.Exists(path) && !System.IO.Directory.Exists(path);

    private static CliFailureException DoesNotExist(string path, string? flag, Exception inner) =>
        new(ExitCodes.LocalIo, $"{Named(path, flag)} does not exist", inner);

    private static string Named(string path, string? flag) => flag is null ? path : $"{flag} {path}";

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "access", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int Access(string path, int mode);
}
