namespace Kms.Cli.Infrastructure;

/// <summary>
/// A path a command was given, checked for what the command expects there before it is used, and
/// read with a failure that names it. .NET says "Access to the path '…' is denied." both for a
/// directory where a file is read and for a file the user may not read, which sends the user to
/// the permissions of a path that has none wrong; here a directory where a file is wanted (or a
/// file where a directory is) is a usage error (exit <see cref="ExitCodes.Usage"/>), and a path
/// the user may not read is <see cref="ExitCodes.LocalIo"/>, each naming the path and what was
/// expected. Missing paths keep .NET's message, which names them.
/// </summary>
internal static class LocalPath
{
    /// <summary>The full path of <paramref name="given"/>, a file to read.</summary>
    /// <exception cref="CliUsageException">A directory is there.</exception>
    public static string File(CliEnvironment environment, string given)
    {
        ArgumentNullException.ThrowIfNull(environment);
        var path = environment.FullPath(given);
        return System.IO.Directory.Exists(path)
            ? throw new CliUsageException($"{path} is a directory: give a file's path")
            : path;
    }

    /// <summary>The full path of <paramref name="given"/>, a directory to read.</summary>
    /// <exception cref="CliUsageException">A file is there.</exception>
    public static string Directory(CliEnvironment environment, string given)
    {
        ArgumentNullException.ThrowIfNull(environment);
        var path = environment.FullPath(given);
        return System.IO.File.Exists(path)
            ? throw new CliUsageException($"{path} is a file: give a directory's path")
            : path;
    }

    /// <summary>Creates the directory <paramref name="given"/> (and its parents) durably, if it is not there; its full path.</summary>
    /// <exception cref="CliUsageException">A file is there.</exception>
    /// <exception cref="CliFailureException">The user may not create it (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static string CreateDirectory(CliEnvironment environment, string given)
    {
        var path = Directory(environment, given);
        try
        {
            return Kms.Core.Files.DurableFile.CreateDirectory(path);
        }
        catch (UnauthorizedAccessException exception)
        {
            throw new CliFailureException(ExitCodes.LocalIo, $"cannot create the directory {path}: permission denied", exception);
        }
    }

    /// <summary>Runs <paramref name="read"/> on <paramref name="path"/> (a full path), saying a refusal to read it as such.</summary>
    /// <exception cref="CliFailureException">The user may not read the path (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static T Read<T>(string path, Func<string, T> read)
    {
        ArgumentNullException.ThrowIfNull(read);
        try
        {
            return read(path);
        }
        catch (UnauthorizedAccessException exception)
        {
            throw NotReadable(path, exception);
        }
    }

    /// <summary>As <see cref="Read{T}(string, Func{string, T})"/>, asynchronously.</summary>
    public static async Task<T> ReadAsync<T>(string path, Func<string, Task<T>> read)
    {
        ArgumentNullException.ThrowIfNull(read);
        try
        {
            return await read(path);
        }
        catch (UnauthorizedAccessException exception)
        {
            throw NotReadable(path, exception);
        }
    }

    /// <summary>The text of the file <paramref name="given"/>.</summary>
    public static string ReadAllText(CliEnvironment environment, string given) =>
        Read(File(environment, given), System.IO.File.ReadAllText);

    /// <summary>The text of the file <paramref name="given"/>.</summary>
    public static Task<string> ReadAllTextAsync(CliEnvironment environment, string given, CancellationToken cancellationToken) =>
        ReadAsync(File(environment, given), path => System.IO.File.ReadAllTextAsync(path, cancellationToken));

    /// <summary>The failure of a path the process may not read: a file, or a directory to list.</summary>
    public static CliFailureException NotReadable(string path, Exception inner) =>
        new(ExitCodes.LocalIo, $"cannot read {path}: permission denied", inner);
}
