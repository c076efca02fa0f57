using System.Buffers;
using System.Diagnostics;
using System.Text;
using Kms.Cli.Infrastructure;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>The outcome of one <c>kms</c> invocation.</summary>
public sealed record CliResult(int ExitCode, string Out, string Error)
{
    public override string ToString() => $"exit {ExitCode}\nstdout:\n{Out}\nstderr:\n{Error}";
}

/// <summary>Runs <c>kms</c> in this process (the same entry point, captured streams) or as a real child process.</summary>
public static class CliRun
{
    /// <summary>
    /// The built <c>kms.dll</c> in src/Kms.Cli's own output (the copy beside the tests lacks the
    /// packages the test project gets from the ASP.NET Core framework), same configuration as the tests.
    /// </summary>
    public static string KmsDll
    {
        get
        {
            var framework = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
            var path = RepositoryPaths.Of("src", "Kms.Cli", "bin", framework.Parent!.Name, framework.Name, "kms.dll");
            return File.Exists(path) ? path : throw new FileNotFoundException($"the kms CLI is not built at {path}", path);
        }
    }

    /// <summary>The variable that lets <c>--insecure-test-kdf</c> through: 1 in every child process unless the test's variables say otherwise.</summary>
    public const string AllowInsecureTestKdf = "KMS_ALLOW_INSECURE_TEST_KDF";

    /// <summary>
    /// The environment of a security officer's <c>kms</c> against <paramref name="server"/>: a new
    /// deployment principal <c>officer</c> holding <c>security-officer</c>, its token in
    /// <paramref name="directory"/>/officer.token.
    /// </summary>
    internal static async Task<Dictionary<string, string>> SecurityOfficerAsync(KmsTestServer server, string directory)
    {
        var officerToken = Path.Combine(directory, "officer.token");
        await File.WriteAllTextAsync(officerToken, await server.CreatePrincipalWithTokenAsync("officer", null, "security-officer") + "\n");
        return new Dictionary<string, string>
        {
            ["KMS_ENDPOINT"] = server.Address.ToString(),
            ["KMS_CA_FILE"] = server.CaCertificatePath,
            ["KMS_TOKEN_FILE"] = officerToken,
        };
    }

    /// <summary>
    /// Runs the entry point in-process with only <paramref name="variables"/> as the environment
    /// and <paramref name="home"/> as the home directory.
    /// </summary>
    internal static Task<CliResult> InProcessAsync(IReadOnlyDictionary<string, string> variables, string home, byte[]? stdin, params string[] args) =>
        InProcessWithAsync(variables, home, () => new MemoryStream(stdin ?? []), ArrayPool<byte>.Shared, args);

    /// <summary>
    /// As <see cref="InProcessAsync(IReadOnlyDictionary{string, string}, string, byte[], string[])"/>,
    /// standard input opened by <paramref name="openStandardInput"/> and plaintext copies'
    /// buffers rented from <paramref name="copyBuffers"/>.
    /// </summary>
    internal static async Task<CliResult> InProcessWithAsync(IReadOnlyDictionary<string, string> variables, string home, Func<Stream> openStandardInput, ArrayPool<byte> copyBuffers, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var binaryOut = new MemoryStream();
        var environment = new CliEnvironment
        {
            Out = output,
            Error = error,
            OpenStandardInput = openStandardInput,
            OpenStandardOutput = () => binaryOut,
            GetVariable = name => variables.GetValueOrDefault(name),
            HomeDirectory = home,
            WorkingDirectory = home,
            CopyBuffers = copyBuffers,
        };
        var code = await KmsCli.RunAsync(args, environment);
        var text = output.ToString();
        if (binaryOut.Length > 0)
        {
            text += Convert.ToBase64String(binaryOut.ToArray());
        }

        return new CliResult(code, text, error.ToString());
    }

    /// <summary>
    /// Runs <c>dotnet kms.dll ARGS</c> as a child process with a clean environment: no KMS_*
    /// variable but those in <paramref name="variables"/> and <see cref="AllowInsecureTestKdf"/>,
    /// HOME in <paramref name="home"/>.
    /// </summary>
    public static Task<CliResult> ProcessAsync(IReadOnlyDictionary<string, string> variables, string home, params string[] args) =>
        ProcessInShellAsync(variables, home, null, args);

    /// <summary>
    /// As <see cref="ProcessAsync(IReadOnlyDictionary{string, string}, string, string[])"/>, started
    /// by <c>bash</c> after <paramref name="shellSetup"/> (e.g. <c>ulimit -f 512</c>), which the
    /// process inherits.
    /// </summary>
    public static async Task<CliResult> ProcessInShellAsync(IReadOnlyDictionary<string, string> variables, string home, string? shellSetup, params string[] args)
    {
        using var process = Start(variables, home, shellSetup, args);
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"kms {string.Join(' ', args)} did not exit within 2 minutes");
        }

        return new CliResult(process.ExitCode, await output, await error);
    }

    /// <summary>
    /// Starts <c>dotnet kms.dll ARGS</c> as <see cref="ProcessAsync"/> runs it (standard input
    /// closed, output and error redirected: read them), for a test that kills it midway.
    /// </summary>
    public static Process Start(IReadOnlyDictionary<string, string> variables, string home, params string[] args) =>
        Start(variables, home, null, args);

    /// <summary>As <see cref="Start(IReadOnlyDictionary{string, string}, string, string[])"/>, started by <c>bash</c> after <paramref name="shellSetup"/> (see <see cref="ProcessInShellAsync"/>).</summary>
    public static Process Start(IReadOnlyDictionary<string, string> variables, string home, string? shellSetup, string[] args)
    {
        var start = new ProcessStartInfo(shellSetup is null ? "dotnet" : "bash")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = home,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        if (shellSetup is not null)
        {
            start.ArgumentList.Add("-c");
            start.ArgumentList.Add($"{shellSetup}; exec dotnet \"$@\"");
            start.ArgumentList.Add("bash");
        }

        start.ArgumentList.Add(KmsDll);
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        foreach (var name in start.Environment.Keys.Where(k => k.StartsWith("KMS_", StringComparison.Ordinal) || k == "XDG_CONFIG_HOME").ToList())
        {
            start.Environment.Remove(name);
        }

        start.Environment["HOME"] = home;
        // The ceremony tests run with --insecure-test-kdf, which the CLI refuses without this;
        // a test of that refusal sets it to something else in its variables.
        start.Environment[AllowInsecureTestKdf] = "1";
        foreach (var (name, value) in variables)
        {
            start.Environment[name] = value;
        }

        var process = Process.Start(start) ?? throw new InvalidOperationException("dotnet did not start");
        process.StandardInput.Close();
        return process;
    }
}

/// <summary>The real server, and a directory to work in, shared by a test class.</summary>
public sealed class CliServerFixture : IAsyncLifetime
{
    public KmsTestServer Server { get; private set; } = null!;

    public string TokenFile => Path.Combine(Server.DataDir, "tokens", "developer.token");

    public string Token => Server.DeveloperToken;

    /// <summary>The environment that points the CLI at the server as the dev developer.</summary>
    public Dictionary<string, string> Variables => new()
    {
        ["KMS_ENDPOINT"] = Server.Address.ToString(),
        ["KMS_CA_FILE"] = Server.CaCertificatePath,
        ["KMS_TOKEN_FILE"] = TokenFile,
        ["KMS_TENANT"] = "dev",
    };

    public async Task InitializeAsync() => Server = await KmsTestServer.StartAsync();

    public async Task DisposeAsync() => await Server.DisposeAsync();

    /// <summary>A new empty directory (also the CLI's home and working directory).</summary>
    public static string NewDirectory() => Directory.CreateTempSubdirectory("kms-cli-").FullName;
}
