using Kms.Core.Files;

namespace Kms.Server.Hosting;

/// <summary>Files only the server's user may read: private keys, tokens.</summary>
internal static class SecretFiles
{
    /// <summary>
    /// Writes <paramref name="text"/> to a new file with mode 0600 from its creation, through
    /// <see cref="DurableFile"/>: an existing file is replaced by a rename, not reused (its mode
    /// cannot widen the new one), and a crash leaves the old file or the whole new one.
    /// </summary>
    public static void Write(string path, string text)
    {
        // Owner-only (0700) when created, and synced into its parent.
        DurableFile.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        DurableFile.Write(path, System.Text.Encoding.UTF8.GetBytes(text), DurableFile.OwnerOnly, overwrite: true);
    }
}
