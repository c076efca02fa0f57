using System.CommandLine;
using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using Kms.Cli.Infrastructure;
using Kms.Client.Rewrap;

namespace Kms.Cli.Commands;

/// <summary>
/// <c>kms rewrap</c>: moves stored ciphertext blobs (from Encrypt or GenerateDataKey — e.g. the
/// files of <c>kms datakey --ciphertext-out</c>) onto a key's primary version with
/// BatchReEncrypt, in place and resumably (<see cref="BlobRewrapper"/>; docs/lifecycle.md).
/// </summary>
internal static class RewrapCommands
{
    public static IEnumerable<Command> Create(CommandRunner runner)
    {
        var key = new Option<string>("--key") { Description = "the key (or alias) whose primary version should hold every blob", Required = true, HelpName = "KEY" };
        var directory = new Option<string>("--dir") { Description = "rewrap every file in this directory (not hidden, not recursive), in name order", HelpName = "DIR" };
        var list = new Option<string>("--in-list") { Description = "rewrap the files listed in this file, one path per line", HelpName = "FILE" };
        var context = ContextOption.Create("--context", "the encryption context of the blobs (repeatable); kept for the new blobs");
        var checkpoint = new Option<string>("--checkpoint") { Description = "file recording the last blob done; a run with the same file resumes after it", HelpName = "FILE" };
        var batchSize = new Option<int>("--batch-size") { Description = "blobs per BatchReEncrypt call (1 to 1000)", DefaultValueFactory = _ => 100, HelpName = "N" };
        var command = new Command("rewrap", "re-encrypt stored ciphertext blobs (files) onto a key's primary version, in place, resumably")
        {
            key, directory, list, context, checkpoint, batchSize,
        };
        runner.SetAction(command, async (ctx, ct) =>
        {
            var parse = ctx.ParseResult;
            var keyName = ctx.KeyName(parse.GetRequiredValue(key));
            var size = parse.GetValue(batchSize);
            if (size is < 1 or > 1000)
            {
                throw new CliUsageException($"--batch-size: {size} is not between 1 and 1000");
            }

            var files = ListFiles(ctx.Environment, parse.GetValue(directory), parse.GetValue(list));
            var encryptionContext = parse.GetValue(context)!;
            FileRewrapCheckpoint? saved = null;
            string? resumeAfter = null;
            if (parse.GetValue(checkpoint) is { } checkpointPath)
            {
                // Read, and its directory checked to take the next one, before any blob is
                // rewrapped: a checkpoint that cannot be saved failed only after the first batch.
                var checkpointFile = LocalPath.Writable(ctx.Environment, checkpointPath, "--checkpoint");
                if (Directory.Exists(checkpointFile))
                {
                    LocalPath.File(ctx.Environment, checkpointFile, "--checkpoint");
                }

                saved = new FileRewrapCheckpoint(checkpointFile);
                resumeAfter = await LocalPath.ReadAsync(checkpointFile, _ => saved.LoadAsync(ct), "--checkpoint");
                if (resumeAfter is not null)
                {
                    ctx.Output.Note($"resuming after {resumeAfter} (from {checkpointFile})");
                }
            }

            var skipped = resumeAfter is null ? 0 : files.Count(f => string.CompareOrdinal(f, resumeAfter) <= 0);
            var rewrapper = new BlobRewrapper(ctx.Client, size);
            var report = await ProgressDisplay.RunAsync(ctx, "rewrapping", files.Count, progress => rewrapper.RunAsync(
                ReadAsync(files, encryptionContext, ct),
                keyName,
                (blob, ciphertext, token) => ReplaceAsync(blob.Id, ciphertext, token),
                saved,
                progress is null ? null : new SeenProgress(progress, skipped),
                ct));

            Write(ctx, keyName, report);
            return report.Failures.Count == 0
                ? ExitCodes.Ok
                : ErrorReport.FromStatus(report.Failures[0].Code, report.Failures[0].Message).ExitCode;
        });
        return [command];
    }

    /// <summary>The blob files, sorted by ordinal (the order BlobRewrapper needs, and the checkpoint's).</summary>
    private static List<string> ListFiles(CliEnvironment environment, string? directory, string? list)
    {
        if ((directory is null) == (list is null))
        {
            throw new CliUsageException("give --dir DIR or --in-list FILE (one of them)");
        }

        IEnumerable<string> files = directory is not null
            ? LocalPath.Read(LocalPath.Directory(environment, directory, "--dir"), d => Directory.GetFiles(d), "--dir").Where(f => !Path.GetFileName(f).StartsWith('.'))
            : LocalPath.Read(LocalPath.File(environment, list!, "--in-list"), File.ReadAllLines, "--in-list").Select(l => l.Trim()).Where(l => l.Length > 0).Select(environment.FullPath);
        return [.. files.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal)];
    }

    /// <summary>
    /// Each file's bytes; of a file larger than any blob, only one byte more than the largest
    /// blob, which the rewrapper reports as too large (a stray file fails alone, whatever its size).
    /// </summary>
    private static async IAsyncEnumerable<StoredBlob> ReadAsync(List<string> files, Dictionary<string, string> context, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var buffer = new byte[BlobRewrapper.MaxBlobBytes + 1];
        foreach (var file in files)
        {
            await using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, useAsync: true);
            var length = await stream.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, cancellationToken);
            yield return new StoredBlob(file, buffer[..length], context);
        }
    }

    /// <summary>A blob's new bytes, in place of the old: through a symbolic link to the file it names, with the old file's permissions.</summary>
    private static async Task ReplaceAsync(string path, byte[] ciphertext, CancellationToken cancellationToken)
    {
        await using var file = OutputFile.Replace(path);
        await file.Stream.WriteAsync(ciphertext, cancellationToken);
        await file.CommitAsync(cancellationToken);
    }

    private static void Write(CliContext context, string keyName, RewrapReport report)
    {
        var p = report.Progress;
        var json = new JsonObject
        {
            ["key"] = keyName,
            ["seen"] = p.Seen,
            ["rewrapped"] = p.Rewrapped,
            ["alreadyCurrent"] = p.AlreadyCurrent,
            ["failed"] = p.Failed,
            ["resumedAfter"] = report.ResumedAfter,
            ["checkpoint"] = report.Checkpoint,
            ["failures"] = new JsonArray([.. report.Failures.Select(f => (JsonNode)new JsonObject
            {
                ["id"] = f.Id,
                ["code"] = ErrorReport.StatusName(f.Code),
                ["message"] = f.Message,
            })]),
        };
        context.Output.Result(json, () =>
        {
            var table = CliOutput.Properties(
            [
                ("key", keyName),
                ("blobs seen", p.Seen.ToString(System.Globalization.CultureInfo.InvariantCulture)),
                ("rewrapped", p.Rewrapped.ToString(System.Globalization.CultureInfo.InvariantCulture)),
                ("already current", p.AlreadyCurrent.ToString(System.Globalization.CultureInfo.InvariantCulture)),
                ("failed", p.Failed.ToString(System.Globalization.CultureInfo.InvariantCulture)),
                ("resumed after", report.ResumedAfter),
                ("checkpoint", report.Checkpoint),
            ]);
            return table;
        });

        foreach (var failure in report.Failures)
        {
            context.Output.Note($"kms: {failure.Id}: {ErrorReport.FromStatus(failure.Code, failure.Message).Message}");
        }
    }

    private sealed class SeenProgress(IProgress<long> bar, long skipped) : IProgress<RewrapProgress>
    {
        public void Report(RewrapProgress value) => bar.Report(skipped + value.Seen);
    }
}
