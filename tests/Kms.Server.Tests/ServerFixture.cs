using Kms.Client;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>One real server (TLS, SoftHSM, SQLite) shared by a test class, and a client of it.</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public KmsTestServer Server { get; private set; } = null!;

    public KmsClient Client { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Server = await KmsTestServer.StartAsync();
        Client = Server.CreateClient();
    }

    public async Task DisposeAsync()
    {
        Client.Dispose();
        await Server.DisposeAsync();
    }

    /// <summary>A key id no other test uses.</summary>
    public static string NewKeyId(string prefix = "k") => $"{prefix}-{Guid.NewGuid():N}";
}
