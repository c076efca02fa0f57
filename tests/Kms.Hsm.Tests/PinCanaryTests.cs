using System.Collections.Concurrent;
using System.Text;
using Kms.Core.Errors;
using Kms.Testing;
using Microsoft.Extensions.Logging;

namespace Kms.Hsm.Tests;

/// <summary>
/// The PINs never reach an exception or a log line: a token made with canary PINs goes through
/// every path that presents one — a start, a refused PIN at a start and in a recovery, the
/// ceremony's session, a wipe and the rotation's up-front check with the wrong security-officer PIN — and no message, exception
/// chain (<c>ToString</c>, inner exceptions and stack traces included) or log line holds either.
/// </summary>
[Collection(ReinitializationGroup.Name)] // CloseAllSessionsForFaultInjection holds the module gate exclusively
public sealed class PinCanaryTests
{
    [Fact]
    public async Task EveryPathThatPresentsAPin_NoExceptionOrLogLineHoldsIt()
    {
        var label = "pin-" + Guid.NewGuid().ToString("N")[..8];
        var userPin = "UserCanary" + Guid.NewGuid().ToString("N")[..10];
        var soPin = "SoCanary" + Guid.NewGuid().ToString("N")[..10];
        _ = SoftHsm.CreateToken(); // renders the test configuration, so ModuleEnvironment is set
        HsmTokenSetup.InitializeToken(SoftHsm.ModulePath, label, soPin, userPin, SoftHsm.ModuleEnvironment);
        var logger = new CapturingLogger();
        var seen = new List<string>();

        HsmOptions Options(string pin) => new()
        {
            ModulePath = SoftHsm.ModulePath,
            ModuleEnvironment = new Dictionary<string, string>(SoftHsm.ModuleEnvironment),
            TokenLabel = label,
            Pin = pin,
            DevMode = true,
            SessionPoolSize = 2,
            RecoveryBackoff = TimeSpan.Zero,
        };

        // A start with the PIN, then with a wrong one that contains it.
        await using (var hsm = Pkcs11Hsm.Open(Options(userPin), logger))
        {
            await hsm.GenerateRandomAsync(1, default);
        }

        seen.Add(Assert.Throws<HsmConfigurationException>(() => Pkcs11Hsm.Open(Options(userPin + "x"), logger)).ToString());

        // The PIN changed while the adapter runs: the recovery's login is refused.
        await using (var hsm = Pkcs11Hsm.Open(Options(userPin), logger))
        {
            var changed = userPin + "-changed";
            RawToken.WithSession(new TestToken(label, userPin, soPin, ""), (session, _) => session.SetPin(userPin, changed));
            hsm.CloseAllSessionsForFaultInjection();
            for (var i = 0; i < 2; i++)
            {
                var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateRandomAsync(1, default));
                seen.Add(e.ToString());
            }

            RawToken.WithSession(new TestToken(label, changed, soPin, ""), (session, _) => session.SetPin(changed, userPin));
        }

        // The ceremony's session, with a wrong user PIN; a wipe and the rotation's check with a wrong SO PIN.
        seen.Add(Assert.Throws<HsmConfigurationException>(() => HsmCeremonySession.Open(Options(userPin), Encoding.UTF8.GetBytes(userPin + "y"))).ToString());
        seen.Add(Assert.Throws<HsmConfigurationException>(() => HsmTokenSetup.WipeToken(SoftHsm.ModulePath, label, soPin + "z", SoftHsm.ModuleEnvironment)).ToString());
        seen.Add(Assert.Throws<HsmConfigurationException>(() => HsmTokenSetup.CheckSecurityOfficerPin(SoftHsm.ModulePath, label, Encoding.UTF8.GetBytes(soPin + "w"), SoftHsm.ModuleEnvironment)).ToString());
        seen.Add(Assert.Throws<HsmConfigurationException>(() => HsmTokenSetup.InitializeToken(SoftHsm.ModulePath, label, soPin, userPin, SoftHsm.ModuleEnvironment)).ToString());

        seen.AddRange(logger.Lines);
        Assert.Contains(logger.Lines, line => line.Contains("refused the PIN", StringComparison.Ordinal)); // the paths were taken
        foreach (var text in seen)
        {
            Assert.DoesNotContain(userPin, text, StringComparison.Ordinal);
            Assert.DoesNotContain(soPin, text, StringComparison.Ordinal);
        }

        HsmTokenSetup.WipeToken(SoftHsm.ModulePath, label, soPin, SoftHsm.ModuleEnvironment);
    }

    private sealed class CapturingLogger : ILogger
    {
        private readonly ConcurrentQueue<string> _lines = new();

        public IEnumerable<string> Lines => _lines;

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            _lines.Enqueue($"{eventId.Id} {formatter(state, exception)} {state} {exception}");
    }
}
