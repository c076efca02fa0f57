using Kms.Core.Quorum;

namespace Kms.Server.Hosting;

/// <summary>
/// The node's record of the newest officer set it has verified (<see cref="IOfficerHeadRecord"/>):
/// <c>{DataDir}/quorum/officer-head</c>, one line "SEQUENCE HASH", owner-only, replaced atomically.
/// Whoever can write the database but not this node's disk cannot roll the chain back past it.
/// A record it cannot read or write refuses quorum operations; the caller is told that much,
/// the server log (event 1133) where and why — a caller learns no path or OS error.
/// </summary>
internal sealed class OfficerHeadFile(string path, ILogger logger) : IOfficerHeadRecord
{
    private readonly Lock _lock = new();

    public string Location => path;

    public OfficerHead? Read()
    {
        lock (_lock)
        {
            if (!File.Exists(path))
            {
                return null;
            }

            string text;
            try
            {
                text = File.ReadAllText(path);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw Refused("cannot be read", e.Message);
            }

            return OfficerHead.Parse(text) ?? throw Refused("is not \"SEQUENCE HASH\"", "malformed");
        }
    }

    public void Advance(OfficerHead head)
    {
        ArgumentNullException.ThrowIfNull(head);
        lock (_lock)
        {
            if (Read() is { } recorded && recorded.Sequence >= head.Sequence)
            {
                return;
            }

            try
            {
                Write(head);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw Refused("cannot be written", e.Message);
            }
        }
    }

    private Core.Errors.KmsException Refused(string what, string error)
    {
        ServerLog.OfficerHeadRecordFailed(logger, path, what, error);
        return Core.Errors.KmsErrors.FailedPrecondition($"quorum operations are refused: this node's officer head record {what} (the server log says where and why)");
    }

    private void Write(OfficerHead head)
    {
        // {DataDir}/quorum synced into the data directory when created, or a power loss could
        // take the record away with it.
        Kms.Core.Files.DurableFile.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var temporary = path + ".new";
        File.Delete(temporary);
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        using (var file = new FileStream(temporary, options))
        {
            file.Write(System.Text.Encoding.ASCII.GetBytes(head.Format()));
            file.Flush(flushToDisk: true);
        }

        File.Move(temporary, path, overwrite: true);

        // The rename is durable only once the directory is: until then a power loss can bring
        // back the older head, the very rollback this record is there to catch.
        Kms.Core.Files.DirectorySync.Flush(Path.GetDirectoryName(Path.GetFullPath(path))!);
    }
}
