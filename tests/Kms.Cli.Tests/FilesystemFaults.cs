namespace Kms.Cli.Tests;

/// <summary>
/// A filesystem that fills up or turns read-only at a moment a test controls: while a ceremony
/// waits for its PIN on a FIFO, after its up-front checks.
/// </summary>
internal static class FilesystemFaults
{
    /// <summary>
    /// Runs a ceremony (<c>kms ARGS</c> in <paramref name="directory"/>) whose <c>--pin-file</c> is a
    /// FIFO (in place of the one ARGS give, if any) fed from <paramref name="pinFile"/>: once
    /// it opens the FIFO (its paths probed, its PIN next), <paramref name="meanwhile"/> runs, then
    /// the PIN is written and the run goes on. <paramref name="shellSetup"/>: as
    /// <see cref="CliRun.ProcessInShellAsync"/>'s (e.g. <see cref="FailingUnlink"/>).
    /// </summary>
    public static async Task<CliResult> WithPinOnAFifoAsync(string directory, string pinFile, string[] args, Func<Task> meanwhile, string? shellSetup = null)
    {
        var fifo = Path.Combine(directory, "pin.fifo");
        File.Delete(fifo);
        await ToolAsync("mkfifo", fifo);
        var pinAt = Array.IndexOf(args, "--pin-file");
        using var process = CliRun.Start(new Dictionary<string, string>(), directory, shellSetup,
            pinAt < 0 ? [.. args, "--pin-file", fifo] : [.. args.Select((a, i) => i == pinAt + 1 ? fifo : a)]);
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();

        // Opening the FIFO's write end returns once the ceremony has opened its read end.
        var opened = Task.Run(() => new FileStream(fifo, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1));
        var exited = process.WaitForExitAsync();
        if (await Task.WhenAny(opened, exited).WaitAsync(TimeSpan.FromMinutes(2)) == exited)
        {
            // Ended before it read its PIN: release the open above, and say why.
            using (new FileStream(fifo, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1))
            {
            }

            Assert.Fail($"the ceremony ended before it read its PIN: exit {process.ExitCode}\n{await error}");
        }

        await using (var pin = await opened)
        {
            await meanwhile();
            await pin.WriteAsync(await File.ReadAllBytesAsync(pinFile));
        }

        await exited.WaitAsync(TimeSpan.FromMinutes(2));
        return new CliResult(process.ExitCode, await output, await error);
    }

    /// <summary>
    /// A shell set-up (<see cref="CliRun.ProcessInShellAsync"/>) that runs the command under
    /// strace(1), every call of <paramref name="syscalls"/> on <paramref name="path"/> (by name or
    /// through a descriptor of it), and only on it, failing with <paramref name="error"/> (an errno
    /// name): a failure where the test says, whatever the filesystem. Only those system calls stop
    /// the process (seccomp-bpf). strace missing fails the run, never skips it.
    /// </summary>
    public static string Failing(string path, string syscalls, string error) =>
        $"exec strace -f -qq -o /dev/null --seccomp-bpf -P '{path}' -e trace={syscalls} -e inject={syscalls}:error={error} -- dotnet \"$@\"";

    /// <summary><see cref="Failing"/>: a deletion of <paramref name="path"/> refused (EACCES).</summary>
    public static string FailingUnlink(string path) => Failing(path, "unlink,unlinkat", "EACCES");

    // Fills the filesystem at mount but for spare pages of 4 KiB (tmpfs allocates by the page).
    public static async Task FillAsync(string mount, int spare)
    {
        var reserve = Path.Combine(mount, "spare");
        await File.WriteAllBytesAsync(reserve, new byte[spare * 4096]);
        await using (var filler = new FileStream(Path.Combine(mount, "filler"), FileMode.CreateNew, FileAccess.Write, FileShare.None, 0))
        {
            var page = new byte[4096];
            try
            {
                while (true)
                {
                    filler.Write(page);
                }
            }
            catch (IOException)
            {
                // Full.
            }
        }

        File.Delete(reserve);
    }

    // mount(8), umount(8), mkfifo(1): the test fails, never skips, where they cannot run.
    public static async Task ToolAsync(string tool, params string[] args)
    {
        var start = new System.Diagnostics.ProcessStartInfo(tool, args) { RedirectStandardError = true };
        using var process = System.Diagnostics.Process.Start(start)!;
        var error = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.True(process.ExitCode == 0, $"{tool} {string.Join(' ', args)}: {error}");
    }
}
