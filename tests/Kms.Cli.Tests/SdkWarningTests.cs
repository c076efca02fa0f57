using System.Net;
using System.Net.Sockets;
using System.Text;
using Kms.Cli.Infrastructure;
using Microsoft.Extensions.Logging;

namespace Kms.Cli.Tests;

/// <summary>
/// The SDK's warnings (here 3001, an endpoint marked down and failed over) reach the user of
/// <c>kms</c> on standard error, one line each, and never touch standard output.
/// </summary>
public sealed class SdkWarningTests(CliServerFixture fixture) : IClassFixture<CliServerFixture>, IDisposable
{
    private const string Plaintext = "attack at dawn\n";

    private readonly string _directory = CliServerFixture.NewDirectory();

    // Bound, never listening: a connection to it is refused at once, and no other test takes the port.
    private readonly Socket _deadPort = Bound();

    public void Dispose()
    {
        _deadPort.Dispose();
        Directory.Delete(_directory, recursive: true);
    }

    [Fact]
    public async Task DecryptToStandardOutput_FirstEndpointDown_WarnsOnStandardError_StandardOutputIsThePlaintextAlone()
    {
        var key = await EncryptedFileAsync();

        var direct = await RunAsync(fixture.Variables, "decrypt", "--key", key, "--in", "msg.kmse", "--out", "-");
        var failedOver = await RunAsync(WithDeadEndpointFirst(), "decrypt", "--key", key, "--in", "msg.kmse", "--out", "-");

        Assert.True(direct.ExitCode == 0, direct.ToString());
        Assert.True(failedOver.ExitCode == 0, failedOver.ToString());
        Assert.Equal(Convert.ToBase64String(Encoding.UTF8.GetBytes(Plaintext)), direct.Out);
        Assert.Equal(direct.Out, failedOver.Out);
        Assert.Equal("", direct.Error);
        var warning = Assert.Single(failedOver.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"kms: warning: KMS endpoint {DeadEndpoint} marked down after /kms.v1.KeyManagementService/", warning, StringComparison.Ordinal);
        Assert.Contains("failed UNAVAILABLE", warning, StringComparison.Ordinal);
        AssertNoSecretIn(failedOver.Error);
    }

    [Fact]
    public async Task DecryptAsProcess_FirstEndpointDown_WarnsOnStandardError_StandardOutputIsThePlaintextAlone()
    {
        var key = await EncryptedFileAsync();

        var result = await CliRun.ProcessAsync(WithDeadEndpointFirst(), _directory, "decrypt", "--key", key, "--in", "msg.kmse", "--out", "-");

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal(Plaintext, result.Out);
        var warning = Assert.Single(result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"kms: warning: KMS endpoint {DeadEndpoint} marked down", warning, StringComparison.Ordinal);
        AssertNoSecretIn(result.Error);
    }

    [Fact]
    public async Task EncryptToStandardOutput_FirstEndpointDown_WarnsOnStandardError_StandardOutputIsTheMessageAlone()
    {
        var key = $"warn-{Guid.NewGuid():N}";
        Assert.Equal(0, (await RunAsync(fixture.Variables, "keys", "create", key)).ExitCode);
        await File.WriteAllTextAsync(Path.Combine(_directory, "plain.txt"), Plaintext);

        var encrypted = await RunAsync(WithDeadEndpointFirst(), "encrypt", "--key", key, "--in", "plain.txt", "--out", "-");

        Assert.True(encrypted.ExitCode == 0, encrypted.ToString());
        Assert.StartsWith($"kms: warning: KMS endpoint {DeadEndpoint} marked down", encrypted.Error, StringComparison.Ordinal);
        AssertNoSecretIn(encrypted.Error);
        // Standard output is the envelope message and nothing else: it decrypts.
        await File.WriteAllBytesAsync(Path.Combine(_directory, "out.kmse"), Convert.FromBase64String(encrypted.Out));
        var decrypted = await RunAsync(fixture.Variables, "decrypt", "--key", key, "--in", "out.kmse", "--out", "-");
        Assert.True(decrypted.ExitCode == 0, decrypted.ToString());
        Assert.Equal(Plaintext, Encoding.UTF8.GetString(Convert.FromBase64String(decrypted.Out)));
    }

    /// <summary>
    /// One endpoint, and nothing there: the failure is one line. The endpoint's "marked down"
    /// warning, with nothing to fail over to, only repeated it before the error line.
    /// </summary>
    [Fact]
    public async Task OneEndpointDown_TheFailureIsOneLine()
    {
        var variables = fixture.Variables;
        variables["KMS_ENDPOINT"] = DeadEndpoint;

        var result = await RunAsync(variables, "keys", "list", "--timeout", "10");

        Assert.Equal(ExitCodes.Unavailable, result.ExitCode);
        var line = Assert.Single(result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("kms: UNAVAILABLE: ", line, StringComparison.Ordinal);
        Assert.Equal("", result.Out);
    }

    [Fact]
    public async Task BothEndpointsDown_EachIsNamed_ThenTheFailure()
    {
        using var second = Bound();
        var variables = fixture.Variables;
        variables["KMS_ENDPOINT"] = $"{DeadEndpoint},https://127.0.0.1:{((IPEndPoint)second.LocalEndPoint!).Port}/";

        var result = await RunAsync(variables, "keys", "list", "--timeout", "10");

        Assert.Equal(ExitCodes.Unavailable, result.ExitCode);
        var lines = result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length);
        Assert.All(lines[..2], line => Assert.StartsWith("kms: warning: KMS endpoint https://127.0.0.1:", line, StringComparison.Ordinal));
        Assert.StartsWith("kms: UNAVAILABLE: ", lines[2], StringComparison.Ordinal);
        Assert.Equal("", result.Out);
    }

    [Fact]
    public void Log_EndpointDown_NotWrittenWithOneEndpoint()
    {
        var error = new StringWriter();

        new StandardErrorLog(error, verbose: true, failover: false).Log(LogLevel.Warning, new EventId(3001), "KMS endpoint https://a/ marked down", null, (text, _) => text);
        new StandardErrorLog(error, verbose: true, failover: false).Log(LogLevel.Warning, new EventId(3005), "attempts not sent", null, (text, _) => text);

        Assert.Equal("kms: warning: attempts not sent" + Environment.NewLine, error.ToString());
    }

    [Fact]
    public void Log_InformationAndDebug_NotWritten()
    {
        var error = new StringWriter();
        using var log = new StandardErrorLog(error, verbose: true, failover: true);

        log.Log(LogLevel.Information, new EventId(3002), "KMS endpoint https://a/ is back", null, (text, _) => text);
        log.Log(LogLevel.Debug, new EventId(3003), "retrying", null, (text, _) => text);

        Assert.Equal("", error.ToString());
    }

    [Fact]
    public void Log_WarningWithLineBreaksAndAnException_OneLine_ExceptionOnlyWhenVerbose()
    {
        var quiet = new StringWriter();
        var verbose = new StringWriter();
        var failure = new InvalidOperationException("inner detail");

        new StandardErrorLog(quiet, verbose: false, failover: true).Log(LogLevel.Warning, new EventId(3001), "down:\r\nconnection refused\u001b[2J", failure, (text, _) => text);
        new StandardErrorLog(verbose, verbose: true, failover: true).Log(LogLevel.Error, default, "down", failure, (text, _) => text);

        Assert.Equal("kms: warning: down: connection refused\\u001B[2J" + Environment.NewLine, quiet.ToString());
        Assert.StartsWith("kms: error: down" + Environment.NewLine + "System.InvalidOperationException: inner detail", verbose.ToString(), StringComparison.Ordinal);
    }

    private string DeadEndpoint => $"https://127.0.0.1:{((IPEndPoint)_deadPort.LocalEndPoint!).Port}/";

    private static Socket Bound()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return socket;
    }

    private Dictionary<string, string> WithDeadEndpointFirst()
    {
        var variables = fixture.Variables;
        variables["KMS_ENDPOINT"] = $"{DeadEndpoint},{fixture.Server.Address}";
        return variables;
    }

    private async Task<string> EncryptedFileAsync()
    {
        var key = $"warn-{Guid.NewGuid():N}";
        Assert.Equal(0, (await RunAsync(fixture.Variables, "keys", "create", key)).ExitCode);
        await File.WriteAllTextAsync(Path.Combine(_directory, "plain.txt"), Plaintext);
        var encrypted = await RunAsync(fixture.Variables, "encrypt", "--key", key, "--in", "plain.txt", "--out", "msg.kmse");
        Assert.True(encrypted.ExitCode == 0, encrypted.ToString());
        return key;
    }

    private void AssertNoSecretIn(string error)
    {
        Assert.DoesNotContain(fixture.Token, error, StringComparison.Ordinal);
        Assert.DoesNotContain(Plaintext.Trim(), error, StringComparison.Ordinal);
    }

    private Task<CliResult> RunAsync(Dictionary<string, string> variables, params string[] args) => CliRun.InProcessAsync(variables, _directory, null, args);
}
