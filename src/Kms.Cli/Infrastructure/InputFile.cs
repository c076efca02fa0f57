namespace Kms.Cli.Infrastructure;

/// <summary>A command's input: a file, or <c>-</c> for standard input.</summary>
internal static class InputFile
{
    /// <summary>Opens <paramref name="pathOrDash"/> (given by <paramref name="flag"/>) for reading; <paramref name="length"/> is its size, or -1 for standard input.</summary>
    /// <exception cref="CliUsageException">A directory is there.</exception>
    /// <exception cref="CliFailureException">The file is not there or may not be read (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static Stream Open(CliEnvironment environment, string pathOrDash, string flag, out long length)
    {
        ArgumentNullException.ThrowIfNull(environment);
        if (pathOrDash == "-")
        {
            length = -1;
            return environment.OpenStandardInput();
        }

        // Opened, a directory failed as "Access to the path is denied", which sent the user to its permissions.
        var path = LocalPath.File(environment, pathOrDash, flag);
        var stream = LocalPath.Read(path, p => new FileStream(p, FileMode.Open, FileAccess.Read, FileShare.Read, 81920, FileOptions.Asynchronous | FileOptions.SequentialScan), flag);
        length = stream.CanSeek ? stream.Length : -1;
        return stream;
    }

    /// <summary>Refuses to read and write the same file (the output would destroy the input as it is read).</summary>
    public static void RefuseSame(CliEnvironment environment, string input, string output)
    {
        ArgumentNullException.ThrowIfNull(environment);
        if (input != "-" && output != "-" && string.Equals(environment.FullPath(input), environment.FullPath(output), StringComparison.Ordinal))
        {
            throw new CliUsageException("--in and --out are the same file");
        }
    }
}
