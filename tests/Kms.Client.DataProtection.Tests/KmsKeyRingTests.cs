using System.Security.Cryptography;
using System.Text;
using System.Xml.Linq;
using Kms.Client.DataProtection;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.FileProviders;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace Kms.Client.DataProtection.Tests;

public sealed class DataProtectionServerFixture : IAsyncLifetime
{
    public KmsTestServer Server { get; private set; } = null!;

    /// <summary>A key-user principal's token: the application's credential.</summary>
    public string AppToken { get; private set; } = null!;

    public string AppPrincipal { get; } = $"token:dp-app-{Guid.NewGuid():N}"[..26];

    public async Task InitializeAsync()
    {
        Server = await KmsTestServer.StartAsync();
        AppToken = await Server.CreatePrincipalWithTokenAsync(AppPrincipal["token:".Length..], "dev", "key-user");
    }

    public async Task DisposeAsync() => await Server.DisposeAsync();
}

/// <summary>ASP.NET Core Data Protection's key ring, protected at rest by the KMS, against the real server.</summary>
public sealed class KmsKeyRingTests(DataProtectionServerFixture fixture) : IClassFixture<DataProtectionServerFixture>
{
    private const string DecryptorTypeName = "Kms.Client.DataProtection.KmsXmlDecryptor";

    private static readonly XNamespace DataProtection = "http://schemas.asp.net/2015/03/dataProtection";

    [Fact]
    public async Task ProtectKeysWithKms_ANewProviderOverTheSameDirectory_UnprotectsThroughTheKms_Audited()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        var payload = Protect(directory, key, "app-a", "hello");

        Assert.Equal("hello", Unprotect(directory, key, "app-a", payload));

        using var officer = fixture.Server.CreateClient(await fixture.Server.CreatePrincipalWithTokenAsync($"officer-{Guid.NewGuid():N}"[..16], null, "security-officer"));
        var events = (await officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Principal = fixture.AppPrincipal, Operation = "/kms.v1.KeyManagementService/Decrypt", PageSize = 1000 })).Events;
        Assert.Contains(events, e => e.Outcome == "OK" && e.Resource.StartsWith(key + "/versions/", StringComparison.Ordinal)
            && e.ContextHashes.ContainsKey("purpose") && e.ContextHashes.ContainsKey("application"));
    }

    [Fact]
    public async Task KeyFiles_HoldNoKeyMaterial_OnlyTheKmsCiphertext_NamingTheDecryptor()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        Protect(directory, key, "app-a", "hello");

        var files = Directory.GetFiles(directory, "key-*.xml");
        Assert.NotEmpty(files);
        foreach (var file in files)
        {
            var document = XDocument.Load(file);
            var secret = Assert.Single(document.Descendants(DataProtection + "encryptedSecret"));
            Assert.StartsWith(DecryptorTypeName + ",", (string?)secret.Attribute("decryptorType"), StringComparison.Ordinal);
            var encrypted = Assert.Single(secret.Elements("kmsEncryptedKey"));
            Assert.Equal(key, (string?)encrypted.Attribute("key"));
            Assert.Empty(document.Descendants("masterKey"));

            // The master key, as only the KMS can give it back.
            using var client = fixture.Server.CreateClient(fixture.AppToken);
            using var decrypted = await client.DecryptAsync(
                Convert.FromBase64String((string)encrypted.Element("ciphertext")!),
                new Dictionary<string, string> { ["purpose"] = "aspnetcore-dataprotection", ["application"] = "app-a" });
            var masterKeyElement = XElement.Parse(Encoding.UTF8.GetString(decrypted.Plaintext));
            Assert.Equal("masterKey", masterKeyElement.Name.LocalName);
            var masterKeyBase64 = (string)masterKeyElement.Element("value")!;
            var masterKey = Convert.FromBase64String(masterKeyBase64);
            Assert.True(masterKey.Length >= 32);

            foreach (var any in Directory.GetFiles(directory))
            {
                var onDisk = await File.ReadAllBytesAsync(any);
                Assert.DoesNotContain(masterKeyBase64, Encoding.UTF8.GetString(onDisk), StringComparison.Ordinal);
                Assert.Equal(-1, onDisk.AsSpan().IndexOf(masterKey));
                Assert.Equal(-1, onDisk.AsSpan().IndexOf(Encoding.UTF8.GetBytes(masterKeyBase64)));
            }
        }
    }

    [Fact]
    public async Task TamperedCiphertextInTheKeyFile_NotUnprotected_TheKmsOpaqueRefusal_NothingOfTheKey()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        var payload = Protect(directory, key, "app-a", "hello");
        var file = Assert.Single(Directory.GetFiles(directory, "key-*.xml"));
        var document = XDocument.Load(file);
        var ciphertext = document.Descendants("ciphertext").Single();
        var bytes = Convert.FromBase64String(ciphertext.Value);
        bytes[^1] ^= 0x01;
        ciphertext.Value = Convert.ToBase64String(bytes);
        document.Save(file);

        var refusal = KmsRefusal(() => Unprotect(directory, key, "app-a", payload));

        Assert.Contains("InvalidArgument: decryption failed", refusal.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(ciphertext.Value, refusal.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task KeyFileMovedToAnotherApplication_TheKmsRefusesItsContext()
    {
        var key = await CreateKeyAsync();
        var directoryA = NewKeyDirectory();
        var payload = Protect(directoryA, key, "app-a", "hello");
        var directoryB = NewKeyDirectory();
        Directory.CreateDirectory(directoryB);
        foreach (var file in Directory.GetFiles(directoryA))
        {
            File.Copy(file, Path.Combine(directoryB, Path.GetFileName(file)));
        }

        // Application B holds rights on the same KMS key; only the context tells the entries apart.
        var refusal = KmsRefusal(() => Unprotect(directoryB, key, "app-b", payload));

        Assert.Contains("InvalidArgument: decryption failed", refusal.Message, StringComparison.Ordinal);
        Assert.Contains($"encrypted under '{key}'", refusal.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task PrincipalTheKeyPolicyLetsEncryptOnly_NotUnprotected_PermissionDenied()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        var payload = Protect(directory, key, "app-a", "hello");
        var encryptOnly = $"dp-encrypt-only-{Guid.NewGuid():N}"[..28];
        var token = await fixture.Server.CreatePrincipalWithTokenAsync(encryptOnly, "dev", "key-user");
        using (var developer = fixture.Server.CreateClient())
        {
            await developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
            {
                Name = key,
                Entries =
                {
                    new KeyPolicyEntry { Principal = fixture.AppPrincipal, Operations = { "ENCRYPT", "DECRYPT" } },
                    new KeyPolicyEntry { Principal = "token:" + encryptOnly, Operations = { "ENCRYPT" } },
                },
            });
        }

        var refusal = KmsRefusal(() => Unprotect(directory, key, "app-a", payload, token));

        Assert.Contains("PermissionDenied", refusal.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(token, refusal.ToString(), StringComparison.Ordinal);
        Assert.Equal("hello", Unprotect(directory, key, "app-a", payload));
    }

    [Fact]
    public void Encrypt_AnElementLargerThanKmsEncryptTakes_RefusedBeforeAnyCall()
    {
        var services = new ServiceCollection();
        services.AddDataProtection().ProtectKeysWithKms(new KmsClient(new KmsClientOptions { Endpoint = new Uri("https://127.0.0.1:1") }), "tenants/dev/keys/none", o => o.ApplicationName = "app-a");
        using var provider = services.BuildServiceProvider();
        var encryptor = new KmsXmlEncryptor(provider);

        var e = Assert.Throws<InvalidOperationException>(() => encryptor.Encrypt(new XElement("descriptor", new string('x', Kms.Core.Limits.MaxEncryptPlaintextBytes))));

        Assert.Contains("KMS Encrypt takes at most 65536", e.Message, StringComparison.Ordinal);
    }

    // Data Protection's default application name is the content root path: every container built
    // the usual way runs at /app, and applications sharing that name would share one context.
    [Fact]
    public async Task ApplicationNeverNamed_DataProtectionRefusedAtFirstUse_NamingSetApplicationName_NoKeyWritten()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        using var provider = Provider(directory, key, application: null, fixture.AppToken, contentRoot: "/app");

        var e = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect("hello"));

        Assert.Contains("SetApplicationName", e.Message, StringComparison.Ordinal);
        Assert.Contains("KmsDataProtectionOptions.ApplicationName", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(directory) && Directory.EnumerateFiles(directory).Any());
    }

    // SetApplicationName to the very default is no name: it is what every application at that path gets.
    [Fact]
    public async Task ApplicationNamedItsOwnContentRoot_RefusedAsUnnamed()
    {
        var key = await CreateKeyAsync();
        using var provider = Provider(NewKeyDirectory(), key, application: "/app", fixture.AppToken, contentRoot: "/app/");

        var e = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IDataProtectionProvider>());

        Assert.Contains("SetApplicationName", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ApplicationNeverNamed_UnderAHost_StartupRefused()
    {
        var key = await CreateKeyAsync();
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { ContentRootPath = Path.GetTempPath() });
        builder.Services.AddKmsClient(o =>
        {
            o.Endpoint = fixture.Server.Address;
            o.CaCertificatePath = fixture.Server.CaCertificatePath;
            o.ApiToken = fixture.AppToken;
        });
        builder.Services.AddDataProtection().PersistKeysToFileSystem(new DirectoryInfo(NewKeyDirectory())).ProtectKeysWithKms(key);
        using var host = builder.Build();

        var e = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());

        Assert.Contains("SetApplicationName", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ApplicationNamedInProtectKeysWithKms_UnderTheDefaultDiscriminator_Works_BoundToThatName()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        string payload;
        using (var provider = Provider(directory, key, application: null, fixture.AppToken, contentRoot: "/app", kmsApplicationName: "shop"))
        {
            payload = provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect("hello");
        }

        using (var provider = Provider(directory, key, application: null, fixture.AppToken, contentRoot: "/app", kmsApplicationName: "shop"))
        {
            Assert.Equal("hello", provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload));
        }

        var refusal = KmsRefusal(() =>
        {
            using var other = Provider(directory, key, application: null, fixture.AppToken, contentRoot: "/app", kmsApplicationName: "billing");
            other.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload);
        });
        Assert.Contains("InvalidArgument: decryption failed", refusal.Message, StringComparison.Ordinal);
    }

    // Both at /app, one KMS key both may use: only the names tell their key rings apart.
    [Fact]
    public async Task TwoApplicationsNamedDifferently_AtTheSameContentRoot_CannotReadEachOthersRing()
    {
        var key = await CreateKeyAsync();
        var shared = NewKeyDirectory();
        var payload = Protect(shared, key, "shop", "hello", contentRoot: "/app");
        var shopEntry = EncryptedEntry(shared);

        // Billing over shop's ring: the KMS refuses shop's entry under billing's context (and
        // billing, finding no key it can use, writes one of its own next to it).
        var refusal = KmsRefusal(() => Unprotect(shared, key, "billing", payload, contentRoot: "/app"));
        Assert.Contains("InvalidArgument: decryption failed", refusal.Message, StringComparison.Ordinal);

        // And each one's entry, handed to the other's decryptor, the other way round as well.
        var billingDirectory = NewKeyDirectory();
        Protect(billingDirectory, key, "billing", "bye", contentRoot: "/app");
        var billingEntry = EncryptedEntry(billingDirectory);
        using var shop = Provider(shared, key, "shop", fixture.AppToken, contentRoot: "/app");
        using var billing = Provider(billingDirectory, key, "billing", fixture.AppToken, contentRoot: "/app");
        Assert.Equal("masterKey", new KmsXmlDecryptor(shop).Decrypt(shopEntry).Name.LocalName);
        Assert.Equal("masterKey", new KmsXmlDecryptor(billing).Decrypt(billingEntry).Name.LocalName);
        Assert.StartsWith("the KMS did not decrypt", Assert.Throws<CryptographicException>(() => new KmsXmlDecryptor(shop).Decrypt(billingEntry)).Message, StringComparison.Ordinal);
        Assert.StartsWith("the KMS did not decrypt", Assert.Throws<CryptographicException>(() => new KmsXmlDecryptor(billing).Decrypt(shopEntry)).Message, StringComparison.Ordinal);
    }

    // Someone who may Encrypt under the application's context can put any bytes in a key file; what
    // does not parse as XML is a CryptographicException (as documented), naming no content.
    [Fact]
    public async Task DecryptedEntryThatIsNotXml_CryptographicException_NothingOfTheContent()
    {
        var key = await CreateKeyAsync();
        using var provider = Provider(NewKeyDirectory(), key, "app-a", fixture.AppToken);
        var client = provider.GetRequiredService<KmsClient>();
        var context = new Dictionary<string, string>(StringComparer.Ordinal) { ["purpose"] = "aspnetcore-dataprotection", ["application"] = "app-a" };
        var planted = await client.EncryptAsync(key, Encoding.UTF8.GetBytes("<masterKey>c2VjcmV0IHRleHQ"), context);
        var element = new XElement("kmsEncryptedKey", new XAttribute("version", "1"), new XElement("ciphertext", Convert.ToBase64String(planted.Ciphertext)));

        var e = Assert.Throws<CryptographicException>(() => new KmsXmlDecryptor(provider).Decrypt(element));

        Assert.StartsWith("a Data Protection key ring entry decrypted by the KMS is not an XML element", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("c2VjcmV0", e.ToString(), StringComparison.Ordinal);
    }

    // The KMS down (nothing listens at its address): Data Protection fails, with the KMS's status in
    // the exception, and never writes a key it could not have the KMS encrypt — at a first start
    // (no key ring: nothing written), and over an existing ring it then cannot read (nothing added
    // or changed). Once the KMS is back, the ring reads as before.
    [Fact]
    public async Task KmsDown_ProtectAndUnprotectFail_WithTheKmsStatus_NoKeyWrittenInClear()
    {
        var key = await CreateKeyAsync();
        var empty = NewKeyDirectory();
        using (var down = DownProvider(empty, key))
        {
            var e = Assert.ThrowsAny<Exception>(() => down.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect("hello"));
            Assert.True(KmsUnavailable(e), e.ToString());
        }

        Assert.False(Directory.Exists(empty) && Directory.EnumerateFileSystemEntries(empty).Any());

        var directory = NewKeyDirectory();
        var payload = Protect(directory, key, "app-a", "hello");
        var before = Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(f => (f, File.ReadAllText(f))).ToList();
        using (var down = DownProvider(directory, key))
        {
            var protector = down.GetRequiredService<IDataProtectionProvider>().CreateProtector("test");
            var unprotect = Assert.ThrowsAny<Exception>(() => protector.Unprotect(payload));
            Assert.True(KmsUnavailable(unprotect), unprotect.ToString());
            var protect = Assert.ThrowsAny<Exception>(() => protector.Protect("again"));
            Assert.True(KmsUnavailable(protect), protect.ToString());
        }

        Assert.Equal(before, Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(f => (f, File.ReadAllText(f))).ToList());
        Assert.Equal("hello", Unprotect(directory, key, "app-a", payload));
    }

    [Fact]
    public void Decryptor_InAContainerWithoutProtectKeysWithKms_SaysWhatIsMissing()
    {
        using var provider = new ServiceCollection().BuildServiceProvider();

        var e = Assert.Throws<InvalidOperationException>(() => new KmsXmlDecryptor(provider));

        Assert.Contains("ProtectKeysWithKms", e.Message, StringComparison.Ordinal);
    }

    private async Task<string> CreateKeyAsync()
    {
        using var client = fixture.Server.CreateClient();
        return (await client.CreateKeyAsync("tenants/dev", $"dp-{Guid.NewGuid():N}")).Name;
    }

    private static string NewKeyDirectory() => Scratch.NewPath("dp-keys-");

    private string Protect(string directory, string key, string application, string text, string? contentRoot = null)
    {
        using var provider = Provider(directory, key, application, fixture.AppToken, contentRoot);
        return provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect(text);
    }

    // The one key file's kmsEncryptedKey element.
    private static XElement EncryptedEntry(string directory) =>
        XDocument.Load(Assert.Single(Directory.GetFiles(directory, "key-*.xml"))).Descendants("kmsEncryptedKey").Single();

    private string Unprotect(string directory, string key, string application, string payload, string? token = null, string? contentRoot = null)
    {
        using var provider = Provider(directory, key, application, token ?? fixture.AppToken, contentRoot);
        return provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload);
    }

    // application: SetApplicationName's argument (null: not called); contentRoot: the host's (null: no host environment).
    private ServiceProvider Provider(string directory, string key, string? application, string token, string? contentRoot = null, string? kmsApplicationName = null)
    {
        var services = new ServiceCollection().AddKmsClient(o =>
        {
            o.Endpoint = fixture.Server.Address;
            o.CaCertificatePath = fixture.Server.CaCertificatePath;
            o.ApiToken = token;
        });
        if (contentRoot is not null)
        {
            services.AddSingleton<IHostEnvironment>(new ContentRootOnly(contentRoot));
        }

        var dataProtection = services.AddDataProtection();
        if (application is not null)
        {
            dataProtection.SetApplicationName(application);
        }

        dataProtection
            .PersistKeysToFileSystem(new DirectoryInfo(directory))
            .ProtectKeysWithKms(key, o => o.ApplicationName = kmsApplicationName);
        return services.BuildServiceProvider();
    }

    // Application "app-a" with a client whose KMS address has nothing listening; one attempt per call.
    private ServiceProvider DownProvider(string directory, string key)
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        var services = new ServiceCollection().AddKmsClient(o =>
        {
            o.Endpoint = new Uri($"https://127.0.0.1:{port}");
            o.CaCertificatePath = fixture.Server.CaCertificatePath;
            o.ApiToken = fixture.AppToken;
            o.Retry.MaxAttempts = 1;
        });
        services.AddDataProtection().SetApplicationName("app-a").PersistKeysToFileSystem(new DirectoryInfo(directory)).ProtectKeysWithKms(key);
        return services.BuildServiceProvider();
    }

    // Somewhere in the chain, the encryptor's or decryptor's CryptographicException with the KMS's Unavailable.
    private static bool KmsUnavailable(Exception thrown)
    {
        for (Exception? e = thrown; e is not null; e = e.InnerException)
        {
            if (e is CryptographicException && e.Message.Contains(": Unavailable: ", StringComparison.Ordinal)
                && (e.Message.StartsWith("the KMS did not decrypt a Data Protection key ring entry", StringComparison.Ordinal)
                    || e.Message.StartsWith("KMS Encrypt of a new Data Protection key under", StringComparison.Ordinal)))
            {
                return true;
            }
        }

        return false;
    }

    private sealed class ContentRootOnly(string contentRoot) : IHostEnvironment
    {
        public string EnvironmentName { get; set; } = "Production";

        public string ApplicationName { get; set; } = "app";

        public string ContentRootPath { get; set; } = contentRoot;

        public IFileProvider ContentRootFileProvider { get; set; } = new NullFileProvider();
    }

    /// <summary>Unprotect fails, and the cause is the KMS's refusal to decrypt the key ring entry.</summary>
    private static CryptographicException KmsRefusal(Action unprotect)
    {
        var thrown = Assert.ThrowsAny<CryptographicException>(unprotect);
        for (Exception? e = thrown; e is not null; e = e.InnerException)
        {
            if (e is CryptographicException refusal && refusal.Message.StartsWith("the KMS did not decrypt a Data Protection key ring entry", StringComparison.Ordinal))
            {
                return refusal;
            }
        }

        Assert.Fail("Unprotect failed, but not because the KMS refused the key ring entry: " + thrown);
        return null!;
    }
}
