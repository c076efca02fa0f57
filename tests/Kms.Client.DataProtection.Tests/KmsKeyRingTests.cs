using System.Security.Cryptography;
using System.Text;
using System.Xml.Linq;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Client.DataProtection;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.AspNetCore.DataProtection.KeyManagement;
using Microsoft.AspNetCore.DataProtection.XmlEncryption;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.FileProviders;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
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
            using var decrypted = await client.DecryptAsync(Convert.FromBase64String((string)encrypted.Element("ciphertext")!), BoundContext(document.Root!, "app-a"));
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
        var (key, directory, payload, file, document) = await ProtectedKeyFileAsync();
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

        // Refused at the key ring's load now: Data Protection, unable to read the ring, asks for a new
        // key, which is refused too (its read-back gets PermissionDenied as well).
        var thrown = Assert.ThrowsAny<CryptographicException>(() => Unprotect(directory, key, "app-a", payload, token));

        Assert.Contains(Chain(thrown), e => e is CryptographicException && e.Message.Contains(": PermissionDenied: ", StringComparison.Ordinal));
        Assert.DoesNotContain(token, thrown.ToString(), StringComparison.Ordinal);
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
        XElement shopEntry;
        using (var shopAlone = Provider(shared, key, "shop", fixture.AppToken, contentRoot: "/app"))
        {
            shopEntry = EncryptedEntry(shopAlone);
        }

        // Billing over shop's ring: the KMS refuses shop's entry under billing's context (and
        // billing, finding no key it can use, writes one of its own next to it).
        var refusal = KmsRefusal(() => Unprotect(shared, key, "billing", payload, contentRoot: "/app"));
        Assert.Contains("InvalidArgument: decryption failed", refusal.Message, StringComparison.Ordinal);

        // And each one's entry, handed to the other's decryptor, the other way round as well.
        var billingDirectory = NewKeyDirectory();
        Protect(billingDirectory, key, "billing", "bye", contentRoot: "/app");
        using var shop = Provider(shared, key, "shop", fixture.AppToken, contentRoot: "/app");
        using var billing = Provider(billingDirectory, key, "billing", fixture.AppToken, contentRoot: "/app");
        var billingEntry = EncryptedEntry(billing);
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

    // A repository writer without KMS rights copies a key's element under another key id (with the
    // readUnder the repository is meant to add, naming the original, for good measure): the copy
    // is not decrypted, the original still is.
    [Fact]
    public async Task EntryCopiedUnderAnotherKeyId_NotDecrypted_NamingBothKeys_TheOriginalStillIs()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        var payload = Protect(directory, key, "app-a", "hello");
        var original = XDocument.Load(Assert.Single(Directory.GetFiles(directory, "key-*.xml")));
        var originalId = (string)original.Root!.Attribute("id")!;
        var copy = new XDocument(original);
        var copyId = Guid.NewGuid().ToString("D");
        copy.Root!.SetAttributeValue("id", copyId);
        var entry = copy.Descendants("kmsEncryptedKey").Single();
        entry.Add(new XElement("readUnder", entry.Attributes().Where(a => a.Name.LocalName is "keyId" or "creationDate" or "activationDate" or "expirationDate").ToArray()));
        copy.Save(Path.Combine(directory, $"key-{copyId}.xml"));

        using var provider = Provider(directory, key, "app-a", fixture.AppToken);
        var keys = provider.GetRequiredService<IKeyManager>().GetAllKeys();
        var refused = Assert.ThrowsAny<Exception>(() => keys.Single(k => k.KeyId == Guid.Parse(copyId)).CreateEncryptor());

        var binding = Chain(refused).OfType<CryptographicException>().Single(e => e.Message.Contains("stands under key", StringComparison.Ordinal));
        Assert.Contains($"written for key {originalId} (created ", binding.Message, StringComparison.Ordinal);
        Assert.Contains($"stands under key {copyId} (created ", binding.Message, StringComparison.Ordinal);
        Assert.NotNull(keys.Single(k => k.KeyId == Guid.Parse(originalId)).CreateEncryptor());
        Assert.Equal("hello", provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload));
    }

    // Its dates changed, the expiration put off by ten years: the key is not decrypted, so neither is
    // what it protected — a writer cannot keep a key in use past its expiration, or bring it forward.
    [Theory]
    [InlineData("expirationDate")]
    [InlineData("activationDate")]
    [InlineData("creationDate")]
    public async Task KeyDateChangedInTheRepository_KeyNotDecrypted_NorWhatItProtected(string date)
    {
        var (key, directory, payload, file, document) = await ProtectedKeyFileAsync();
        var element = document.Root!.Element(date)!;
        element.Value = System.Xml.XmlConvert.ToString(((DateTimeOffset)element).AddDays(-3650 * (date == "expirationDate" ? -1 : 1)));
        document.Save(file);

        var thrown = Assert.ThrowsAny<CryptographicException>(() => Unprotect(directory, key, "app-a", payload));

        Assert.Contains(Chain(thrown), e => e.Message.Contains("moved or re-dated in the repository, not decrypted", StringComparison.Ordinal));
    }

    // The descriptor next to the encrypted secret changed in the repository: the encryption algorithm
    // weakened (AES-256 to AES-128), the validation algorithm swapped, or the deserializer type — the
    // type Data Protection instantiates to read the key — pointed at another loadable type. The key is
    // refused before Data Protection instantiates anything, and so is what it protected. Before (format
    // 2), the first two decrypted and Data Protection used the key with the writer's algorithms.
    [Theory]
    [InlineData("encryption")]
    [InlineData("validation")]
    [InlineData("deserializerType")]
    public async Task KeyDescriptorChangedInTheRepository_KeyRefused_NorWhatItProtected(string tampered)
    {
        var (key, directory, payload, file, document) = await ProtectedKeyFileAsync();
        var descriptor = document.Root!.Element("descriptor")!;
        switch (tampered)
        {
            case "encryption":
                Assert.Equal("AES_256_CBC", (string?)descriptor.Descendants("encryption").Single().Attribute("algorithm"));
                descriptor.Descendants("encryption").Single().SetAttributeValue("algorithm", "AES_128_CBC");
                break;
            case "validation":
                Assert.Equal("HMACSHA256", (string?)descriptor.Descendants("validation").Single().Attribute("algorithm"));
                descriptor.Descendants("validation").Single().SetAttributeValue("algorithm", "HMACSHA512");
                break;
            default:
                descriptor.SetAttributeValue("deserializerType", typeof(Microsoft.AspNetCore.DataProtection.AuthenticatedEncryption.ConfigurationModel.ManagedAuthenticatedEncryptorDescriptorDeserializer).AssemblyQualifiedName);
                break;
        }

        document.Save(file);
        var keyId = Guid.Parse((string)document.Root!.Attribute("id")!);

        using var provider = Provider(directory, key, "app-a", fixture.AppToken);
        var stored = provider.GetRequiredService<IKeyManager>().GetAllKeys().Single(k => k.KeyId == keyId);
        var refused = Assert.ThrowsAny<Exception>(() => stored.CreateEncryptor());

        var binding = Chain(refused).OfType<CryptographicException>().Single(e => e.Message.Contains("was changed in the repository, not decrypted", StringComparison.Ordinal)
            || e.Message.Contains("were changed in the repository, not decrypted", StringComparison.Ordinal));
        Assert.Contains($"entry of key {keyId:D} ", binding.Message, StringComparison.Ordinal);
        Assert.Contains(tampered == "deserializerType" ? "the descriptor's deserializer type was changed" : "the descriptor's algorithm settings were changed", binding.Message, StringComparison.Ordinal);
        Assert.ThrowsAny<CryptographicException>(() => provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload));
    }

    // What the repository may change without changing the descriptor — indentation, comments,
    // namespace prefixes, the order of attributes — leaves the key readable: the digest is over a
    // canonical form of the settings.
    [Fact]
    public async Task KeyFileReformatted_DescriptorTheSame_StillUnprotects()
    {
        var (key, directory, payload, file, document) = await ProtectedKeyFileAsync();
        var inner = document.Root!.Element("descriptor")!.Element("descriptor")!;
        inner.AddFirst(new XComment(" reformatted by a backup tool "));
        var encryption = inner.Element("encryption")!;
        encryption.ReplaceWith(new XElement("encryption", new XAttribute("extra", "kept"), new XAttribute("algorithm", "AES_256_CBC")));
        var reformatted = XElement.Parse(XElement.Parse(document.Root!.ToString()).ToString(SaveOptions.DisableFormatting)
            .Replace("xmlns=\"http://schemas.asp.net/2015/03/dataProtection\"", "xmlns:dp=\"http://schemas.asp.net/2015/03/dataProtection\"", StringComparison.Ordinal)
            .Replace("<encryptedSecret ", "<dp:encryptedSecret ", StringComparison.Ordinal)
            .Replace("</encryptedSecret>", "</dp:encryptedSecret>", StringComparison.Ordinal));
        File.WriteAllText(file, reformatted.ToString(SaveOptions.DisableFormatting));

        // The attribute added above is a change: refused. Without it, the same descriptor: read.
        Assert.ThrowsAny<CryptographicException>(() => Unprotect(directory, key, "app-a", payload));
        var withoutExtra = XDocument.Load(file);
        withoutExtra.Descendants("encryption").Single().SetAttributeValue("extra", null);
        File.WriteAllText(file, withoutExtra.Root!.ToString(SaveOptions.DisableFormatting));
        Assert.Contains("dp:encryptedSecret", File.ReadAllText(file), StringComparison.Ordinal);
        Assert.Equal("hello", Unprotect(directory, key, "app-a", payload));
    }

    // A format 3 entry rewritten as format 2 (no descriptor binding): its ciphertext was encrypted
    // under the context with the descriptor, and the KMS refuses it without.
    [Fact]
    public async Task DescriptorBoundEntryRewrittenAsFormat2_TheKmsRefusesIt()
    {
        var (key, directory, payload, file, document) = await ProtectedKeyFileAsync();
        var entry = document.Descendants("kmsEncryptedKey").Single();
        Assert.Equal("3", (string?)entry.Attribute("version"));
        entry.SetAttributeValue("version", "2");
        entry.SetAttributeValue("deserializerType", null);
        entry.SetAttributeValue("descriptor", null);
        document.Save(file);

        var refusal = KmsRefusal(() => Unprotect(directory, key, "app-a", payload));

        Assert.Contains("(format 2, of key ", refusal.Message, StringComparison.Ordinal);
        Assert.Contains("InvalidArgument: decryption failed", refusal.Message, StringComparison.Ordinal);
    }

    // An entry as this library wrote them before (format 2: id and dates, no descriptor) still
    // decrypts, and is not bound to its descriptor; with ReadEntriesWithUnboundDescriptor = false it is refused, saying so.
    [Fact]
    public async Task EntryOfFormat2_StillDecrypts_RefusedOnceReadEntriesWithUnboundDescriptorIsFalse()
    {
        var (key, directory, payload, file, document) = await ProtectedKeyFileAsync();
        var entry = document.Descendants("kmsEncryptedKey").Single();
        using (var client = fixture.Server.CreateClient(fixture.AppToken))
        {
            using var masterKey = await client.DecryptAsync(Convert.FromBase64String((string)entry.Element("ciphertext")!), BoundContext(document.Root!, "app-a"));
            var format2 = BoundContext(document.Root!, "app-a");
            format2.Remove("dataprotection-key-deserializer");
            format2.Remove("dataprotection-key-descriptor");
            var unbound = await client.EncryptAsync(key, masterKey.Plaintext.ToArray(), format2);
            entry.ReplaceWith(new XElement(
                "kmsEncryptedKey",
                new XAttribute("version", "2"),
                new XAttribute("key", key),
                new XAttribute("keyVersion", unbound.KeyVersion),
                entry.Attributes().Where(a => a.Name.LocalName is "keyId" or "creationDate" or "activationDate" or "expirationDate"),
                new XElement("ciphertext", Convert.ToBase64String(unbound.Ciphertext))));
        }

        document.Save(file);

        Assert.Equal("hello", Unprotect(directory, key, "app-a", payload));
        using var strict = Provider(directory, key, "app-a", fixture.AppToken, kms: o => o.ReadEntriesWithUnboundDescriptor = false);
        var thrown = Assert.ThrowsAny<CryptographicException>(() => strict.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload));
        Assert.Contains(Chain(thrown), e => e.Message.Contains("of format 2, bound to its key's id and dates but not to its descriptor, and KmsDataProtectionOptions.ReadEntriesWithUnboundDescriptor is false", StringComparison.Ordinal));
    }

    // A format 3 entry rewritten as format 1 (no id, dates or descriptor): its ciphertext was encrypted under the
    // bound context, and the KMS refuses it under the application's alone.
    [Fact]
    public async Task BoundEntryRewrittenAsFormat1_TheKmsRefusesIt()
    {
        var (key, directory, payload, file, document) = await ProtectedKeyFileAsync();
        var entry = document.Descendants("kmsEncryptedKey").Single();
        Assert.Equal("3", (string?)entry.Attribute("version"));
        entry.SetAttributeValue("version", "1");
        foreach (var name in new[] { "keyId", "creationDate", "activationDate", "expirationDate", "deserializerType", "descriptor" })
        {
            entry.SetAttributeValue(name, null);
        }

        document.Save(file);

        var refusal = KmsRefusal(() => Unprotect(directory, key, "app-a", payload));

        Assert.Contains("(format 1, bound to no key;", refusal.Message, StringComparison.Ordinal);
        Assert.Contains("InvalidArgument: decryption failed", refusal.Message, StringComparison.Ordinal);
    }

    // An entry as this library wrote them before (format 1: the application's context only) still
    // decrypts; with ReadUnboundEntries = false it is refused, saying so.
    [Fact]
    public async Task EntryOfFormat1_StillDecrypts_RefusedOnceReadUnboundEntriesIsFalse()
    {
        var (key, directory, payload, file, document) = await ProtectedKeyFileAsync();
        var entry = document.Descendants("kmsEncryptedKey").Single();
        using (var client = fixture.Server.CreateClient(fixture.AppToken))
        {
            using var masterKey = await client.DecryptAsync(Convert.FromBase64String((string)entry.Element("ciphertext")!), BoundContext(document.Root!, "app-a"));
            var unbound = await client.EncryptAsync(key, masterKey.Plaintext.ToArray(), new Dictionary<string, string>(StringComparer.Ordinal) { ["purpose"] = "aspnetcore-dataprotection", ["application"] = "app-a" });
            entry.ReplaceWith(new XElement(
                "kmsEncryptedKey",
                new XAttribute("version", "1"),
                new XAttribute("key", key),
                new XAttribute("keyVersion", unbound.KeyVersion),
                new XElement("ciphertext", Convert.ToBase64String(unbound.Ciphertext))));
        }

        document.Save(file);

        Assert.Equal("hello", Unprotect(directory, key, "app-a", payload));
        using var strict = Provider(directory, key, "app-a", fixture.AppToken, kms: o => o.ReadUnboundEntries = false);
        var thrown = Assert.ThrowsAny<CryptographicException>(() => strict.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload));
        Assert.Contains(Chain(thrown), e => e.Message.Contains("KmsDataProtectionOptions.ReadUnboundEntries is false", StringComparison.Ordinal));
    }

    // The decryptor is given the entry alone: taken out of the key file, it cannot tell which key it
    // stands under, and decrypts nothing.
    [Fact]
    public async Task EntryDecryptedOutsideTheRepository_Refused()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        Protect(directory, key, "app-a", "hello");
        using var provider = Provider(directory, key, "app-a", fixture.AppToken);
        var entry = XDocument.Load(Assert.Single(Directory.GetFiles(directory, "key-*.xml"))).Descendants("kmsEncryptedKey").Single();

        var e = Assert.Throws<CryptographicException>(() => new KmsXmlDecryptor(provider).Decrypt(entry));

        Assert.StartsWith("a KMS-encrypted Data Protection key read outside the key ring's repository", e.Message, StringComparison.Ordinal);
        Assert.Equal("masterKey", new KmsXmlDecryptor(provider).Decrypt(EncryptedEntry(provider)).Name.LocalName);
    }

    // A principal the key's policy lets encrypt but not decrypt: Data Protection cannot read the ring,
    // finds no usable key and asks for a new one at every refresh (every start). Before, each was
    // written — the ring grew by one key per start, none readable by the next. Now none is: the new
    // key is read back before it is stored, and the failure, logged as an error by Data Protection,
    // names the key, the KMS key and the status. Over an empty ring, nothing is written at all.
    [Fact]
    public async Task PrincipalThatMayEncryptButNotDecrypt_NoKeyWrittenAtAnyRefresh_ErrorNamesTheKeyAndTheStatus()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        Protect(directory, key, "app-a", "hello");
        var token = await EncryptOnlyPrincipalAsync(key);
        var before = Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(f => (f, File.ReadAllText(f))).ToList();

        for (var start = 0; start < 3; start++)
        {
            var logs = new CapturedLogs();
            using var provider = Provider(directory, key, "app-a", token, services: s => s.AddLogging(b => b.AddProvider(logs)));
            var thrown = Assert.ThrowsAny<Exception>(() => provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect("again"));

            var refusal = Chain(thrown).OfType<CryptographicException>().Single(e => e.Message.StartsWith("not writing the new Data Protection key ", StringComparison.Ordinal));
            Assert.Contains($"KMS Encrypt under {key} succeeded, but KMS Decrypt of the result failed: PermissionDenied", refusal.Message, StringComparison.Ordinal);
            Assert.Contains(logs.Entries, e => e.Level == LogLevel.Error && e.Text.Contains(refusal.Message, StringComparison.Ordinal));
            Assert.DoesNotContain(token, logs.AllText, StringComparison.Ordinal);
        }

        Assert.Equal(before, Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(f => (f, File.ReadAllText(f))).ToList());

        var empty = NewKeyDirectory();
        using (var first = Provider(empty, key, "app-a", token))
        {
            Assert.ThrowsAny<Exception>(() => first.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect("hello"));
        }

        Assert.False(Directory.Exists(empty) && Directory.EnumerateFileSystemEntries(empty).Any());
    }

    // The KMS does not answer for the existing key (here: DeadlineExceeded on its Decrypt, while
    // Encrypt and other Decrypts go through): no new key stands in for it; once the KMS answers, the
    // same provider uses the existing key. Before, a new key was written at that refresh.
    [Fact]
    public async Task KmsNotAnsweringForTheExistingKey_NoNewKeyWritten_TheExistingOneUsedOnceItAnswers()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        var payload = Protect(directory, key, "app-a", "hello");
        var before = Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(f => (f, File.ReadAllText(f))).ToList();
        var existing = Convert.FromBase64String((string)XDocument.Load(before[0].f).Descendants("ciphertext").Single());
        var unanswered = new NoAnswerForDecryptOf(existing);
        using var provider = Provider(directory, key, "app-a", fixture.AppToken, client: o =>
        {
            o.Interceptors.Add(unanswered);
            o.Retry.MaxAttempts = 1;
        });
        var protector = provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test");

        var thrown = Assert.ThrowsAny<Exception>(() => protector.Protect("again"));

        var refusal = Chain(thrown).OfType<CryptographicException>().Single(e => e.Message.StartsWith("not writing the new Data Protection key ", StringComparison.Ordinal));
        Assert.Contains($"the KMS did not decrypt a Data Protection key ring entry (of key {(string)XDocument.Load(before[0].f).Root!.Attribute("id")!}", refusal.Message, StringComparison.Ordinal);
        Assert.Contains(": DeadlineExceeded: ", refusal.Message, StringComparison.Ordinal);
        Assert.Equal(before, Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(f => (f, File.ReadAllText(f))).ToList());

        unanswered.Answer = true;
        Assert.Equal("again", protector.Unprotect(protector.Protect("again")));
        Assert.Equal("hello", protector.Unprotect(payload));
        Assert.Equal(before, Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(f => (f, File.ReadAllText(f))).ToList());
    }

    // Someone who may write the repository but holds no KMS rights adds a key of its own, as Data
    // Protection writes a key without an encryptor (its <masterKey> in plain text), or through the
    // NullXmlEncryptor (the same secret, inside an <encryptedSecret> that NullXmlDecryptor reads),
    // activated a second after the genuine key so that it would be the default. It is dropped as
    // the ring is read, with a warning naming it and why (never its secret): Protect still uses the
    // genuine key, nothing new is written, and what the writer protected under its key is refused.
    // Before, the planted key became the default key, and the writer's payload unprotected.
    [Theory]
    [InlineData("plain")]
    [InlineData("null-decryptor")]
    public async Task KeyPlantedUnencryptedInTheRepository_NotRead_ProtectUsesTheGenuineKey_WhatItProtectedRefused_Warned(string variant)
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        var payload = Protect(directory, key, "app-a", "hello");
        var genuineId = Guid.Parse((string)XDocument.Load(Assert.Single(Directory.GetFiles(directory, "key-*.xml"))).Root!.Attribute("id")!);
        var planted = PlantKey(directory, variant == "null-decryptor" ? new NullXmlEncryptor() : null);
        var before = Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(f => (f, File.ReadAllText(f))).ToList();
        Assert.Equal(2, before.Count);

        var logs = new CapturedLogs();
        using var provider = Provider(directory, key, "app-a", fixture.AppToken, services: s => s.AddLogging(b => b.AddProvider(logs)));
        var protector = provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test");

        Assert.Equal(genuineId, KeyIdOf(protector.Protect(Encoding.UTF8.GetBytes("new"))));
        Assert.Equal("hello", protector.Unprotect(payload));
        var refused = Assert.ThrowsAny<CryptographicException>(() => protector.Unprotect(planted.Forged));
        Assert.Contains($"{planted.KeyId:B} was not found in the key ring", refused.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(provider.GetRequiredService<IKeyManager>().GetAllKeys(), k => k.KeyId == planted.KeyId);
        Assert.Equal(before, Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(f => (f, File.ReadAllText(f))).ToList());

        var warning = logs.Entries.First(e => e.EventId == 3008);
        Assert.Equal(LogLevel.Warning, warning.Level);
        Assert.Contains($"Data Protection key {planted.KeyId:D} dropped from the key ring as it was read: ", warning.Text, StringComparison.Ordinal);
        Assert.Contains(
            variant == "plain" ? "its secret is in plain text (no <encryptedSecret>)" : "its secret is read by the decryptor 'Microsoft.AspNetCore.DataProtection.XmlEncryption.NullXmlDecryptor, ",
            warning.Text,
            StringComparison.Ordinal);
        Assert.Contains("KmsDataProtectionOptions.ReadUnencryptedKeys", warning.Text, StringComparison.Ordinal);
        Assert.DoesNotContain(logs.Entries, e => e.EventId == 3008 && e.Text.Contains(genuineId.ToString("D"), StringComparison.Ordinal));
        Assert.DoesNotContain(planted.Secret, logs.AllText, StringComparison.Ordinal);
    }

    // A genuine key's descriptor with a <masterKey> of the writer's put next to (before) its encrypted
    // secret: Data Protection's deserializer reads the first <masterKey>, so that would be the writer's
    // secret under the genuine key's id. Dropped, whatever the entry's format.
    [Fact]
    public async Task PlainMasterKeyAddedNextToTheEncryptedSecret_KeyDropped_Warned()
    {
        var (key, directory, payload, file, document) = await ProtectedKeyFileAsync();
        var keyId = Guid.Parse((string)document.Root!.Attribute("id")!);
        var secret = document.Descendants(DataProtection + "encryptedSecret").Single();
        secret.AddBeforeSelf(new XElement("masterKey", new XElement("value", Convert.ToBase64String(RandomNumberGenerator.GetBytes(64)))));
        document.Save(file);

        var logs = new CapturedLogs();
        using var provider = Provider(directory, key, "app-a", fixture.AppToken, services: s => s.AddLogging(b => b.AddProvider(logs)));

        Assert.DoesNotContain(provider.GetRequiredService<IKeyManager>().GetAllKeys(), k => k.KeyId == keyId);
        Assert.Contains(logs.Entries, e => e.EventId == 3008 && e.Text.Contains($"key {keyId:D} dropped from the key ring as it was read: it holds a <masterKey> in plain text next to its encrypted secret", StringComparison.Ordinal));
        Assert.ThrowsAny<CryptographicException>(() => provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload));
    }

    // The key manager reads the ring at every refresh (and at each GetAllKeys): a dropped key is warned
    // about once per key id, not at each read — it stays dropped each time. A key planted later gets its
    // own warning. Before, 3008 was logged again at every read for the same key.
    [Fact]
    public async Task KeyPlantedUnencrypted_RingReadAgain_WarnedOncePerKeyId_DroppedEachTime()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        Protect(directory, key, "app-a", "hello");
        var planted = PlantKey(directory, encryptor: null);

        var logs = new CapturedLogs();
        using var provider = Provider(directory, key, "app-a", fixture.AppToken, services: s => s.AddLogging(b => b.AddProvider(logs)));
        var keyManager = provider.GetRequiredService<IKeyManager>();
        for (var read = 0; read < 3; read++)
        {
            Assert.DoesNotContain(keyManager.GetAllKeys(), k => k.KeyId == planted.KeyId);
        }

        Assert.Single(logs.Entries, e => e.EventId == 3008 && e.Text.Contains(planted.KeyId.ToString("D"), StringComparison.Ordinal));

        var plantedFile = Assert.Single(Directory.GetFiles(directory, "key-*.xml"), f => f.Contains(planted.KeyId.ToString("D"), StringComparison.Ordinal));
        var second = Guid.NewGuid();
        var copy = XDocument.Load(plantedFile);
        copy.Root!.SetAttributeValue("id", second.ToString("D"));
        copy.Save(Path.Combine(directory, $"key-{second:D}.xml"));
        for (var read = 0; read < 2; read++)
        {
            Assert.DoesNotContain(keyManager.GetAllKeys(), k => k.KeyId == second);
        }

        Assert.Single(logs.Entries, e => e.EventId == 3008 && e.Text.Contains(second.ToString("D"), StringComparison.Ordinal));
        Assert.Single(logs.Entries, e => e.EventId == 3008 && e.Text.Contains(planted.KeyId.ToString("D"), StringComparison.Ordinal));
        Assert.Equal(2, logs.Entries.Count(e => e.EventId == 3008));
    }

    // The documented trade-off: with ReadUnencryptedKeys, a key in plain text is read as Data
    // Protection always read one — the planted key is the default key, and what its writer
    // protected unprotects. Nothing is logged about it.
    [Fact]
    public async Task KeyPlantedInPlainText_ReadUnencryptedKeys_IsRead_AndBecomesTheDefaultKey()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        Protect(directory, key, "app-a", "hello");
        var planted = PlantKey(directory, encryptor: null);

        var logs = new CapturedLogs();
        using var provider = Provider(directory, key, "app-a", fixture.AppToken, services: s => s.AddLogging(b => b.AddProvider(logs)), kms: o => o.ReadUnencryptedKeys = true);
        var protector = provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test");

        Assert.Equal("forged", Encoding.UTF8.GetString(protector.Unprotect(planted.Forged)));
        Assert.Equal(planted.KeyId, KeyIdOf(protector.Protect(Encoding.UTF8.GetBytes("new"))));
        Assert.DoesNotContain(logs.Entries, e => e.EventId == 3008);
    }

    // An application that kept its key ring unencrypted turns ProtectKeysWithKms on. By default its old
    // key is dropped: what it protected no longer unprotects, and a new, KMS-encrypted key is written
    // (the old file left as it was). With ReadUnencryptedKeys (the migration), the old payload still
    // unprotects. Before, the old key was read whatever the settings.
    [Fact]
    public async Task RingWrittenBeforeProtectKeysWithKms_OldKeyDroppedByDefault_ReadWithReadUnencryptedKeys()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        byte[] old;
        using (var before = PlainProvider(directory, encryptor: null))
        {
            old = before.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect(Encoding.UTF8.GetBytes("before"));
        }

        var oldFile = Assert.Single(Directory.GetFiles(directory, "key-*.xml"));
        var oldText = File.ReadAllText(oldFile);

        using (var migrating = Provider(directory, key, "app-a", fixture.AppToken, kms: o => o.ReadUnencryptedKeys = true))
        {
            Assert.Equal("before", Encoding.UTF8.GetString(migrating.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(old)));
        }

        using (var strict = Provider(directory, key, "app-a", fixture.AppToken))
        {
            var protector = strict.GetRequiredService<IDataProtectionProvider>().CreateProtector("test");
            Assert.ThrowsAny<CryptographicException>(() => protector.Unprotect(old));
            Assert.Equal("after", Encoding.UTF8.GetString(protector.Unprotect(protector.Protect(Encoding.UTF8.GetBytes("after")))));
        }

        var newFile = Assert.Single(Directory.GetFiles(directory, "key-*.xml"), f => f != oldFile);
        Assert.Single(XDocument.Load(newFile).Descendants("kmsEncryptedKey"));
        Assert.Equal(oldText, File.ReadAllText(oldFile));
    }

    // A repository writer with ENCRYPT on another key of the tenant — one the application's key-user
    // principal may decrypt with as well — encrypts a key's secret under that key, with the application's
    // full context (here the genuine secret, re-encrypted; a secret of its own would do the same). The KMS
    // decrypts it, naming the other key's version: refused, naming both keys, logged (3009), nothing of
    // the secret. Before, the entry was read as the application's own.
    [Fact]
    public async Task EntryReEncryptedUnderAnotherKeyThePrincipalMayUse_Refused_NamingBothKeys_Logged()
    {
        var key = await CreateKeyAsync();
        var other = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        var payload = Protect(directory, key, "app-a", "hello");
        var file = Assert.Single(Directory.GetFiles(directory, "key-*.xml"));
        var keyId = (string)XDocument.Load(file).Root!.Attribute("id")!;
        var secret = await ReEncryptUnderAsync(file, other, "app-a");

        var logs = new CapturedLogs();
        using var provider = Provider(directory, key, "app-a", fixture.AppToken, services: s => s.AddLogging(b => b.AddProvider(logs)));
        var thrown = Assert.ThrowsAny<CryptographicException>(() => provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload));

        var refusal = OtherKeyRefusal(thrown);
        Assert.Contains($"(of key {keyId}) was decrypted by KMS key {other} (version {other}/versions/1), not by the configured key {key}: encrypted under another KMS key, not read", refusal.Message, StringComparison.Ordinal);
        var warning = logs.Entries.First(e => e.EventId == 3009);
        Assert.Equal(LogLevel.Warning, warning.Level);
        Assert.Contains($"Data Protection key {keyId} refused as it was read: its entry was decrypted by KMS key {other}, not by the configured key {key}", warning.Text, StringComparison.Ordinal);
        Assert.DoesNotContain(secret, logs.AllText, StringComparison.Ordinal);
        Assert.DoesNotContain(secret, thrown.ToString(), StringComparison.Ordinal);
    }

    // Configured through an alias: entries of the key the alias names are read (the application's
    // key-user principal may not read aliases: resolved by a one-byte Encrypt under the alias), one of
    // another key is refused naming the alias and its key. Moved to another key, the alias is followed at
    // once, though its resolution is kept a while (a new key, encrypted under the new one, is read by the
    // same container); entries of the key it named before are read only once that key is listed.
    [Fact]
    public async Task ConfiguredAlias_ItsKeysEntriesRead_AnotherKeysRefused_AMovedAliasFollowed()
    {
        var keyA = await CreateKeyAsync();
        var keyB = await CreateKeyAsync();
        var alias = await CreateAliasAsync(keyA);
        var directory = NewKeyDirectory();
        var payload = Protect(directory, alias, "app-a", "hello");
        Assert.Equal("hello", Unprotect(directory, alias, "app-a", payload));

        var planted = NewKeyDirectory();
        Directory.CreateDirectory(planted);
        var plantedFile = Path.Combine(planted, Path.GetFileName(Assert.Single(Directory.GetFiles(directory, "key-*.xml"))));
        File.Copy(Assert.Single(Directory.GetFiles(directory, "key-*.xml")), plantedFile);
        await ReEncryptUnderAsync(plantedFile, keyB, "app-a");
        var refusal = OtherKeyRefusal(Assert.ThrowsAny<CryptographicException>(() => Unprotect(planted, alias, "app-a", payload)));
        Assert.Contains($"was decrypted by KMS key {keyB} (version {keyB}/versions/1), not by the configured key {alias} (which names {keyA})", refusal.Message, StringComparison.Ordinal);

        using (var provider = Provider(directory, alias, "app-a", fixture.AppToken))
        {
            Assert.Equal("hello", provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload));
            using (var developer = fixture.Server.CreateClient())
            {
                await developer.UpdateAliasAsync(alias, keyB);
            }

            var now = DateTimeOffset.UtcNow;
            var created = provider.GetRequiredService<IKeyManager>().CreateNewKey(now, now.AddDays(90));
            var entry = provider.GetRequiredService<IOptions<KeyManagementOptions>>().Value.XmlRepository!.GetAllElements()
                .Single(k => (string?)k.Attribute("id") == created.KeyId.ToString("D")).Descendants("kmsEncryptedKey").Single();
            Assert.StartsWith(keyB + "/versions/", (string?)entry.Attribute("keyVersion"), StringComparison.Ordinal);
            Assert.Equal("masterKey", new KmsXmlDecryptor(provider).Decrypt(entry).Name.LocalName);
        }

        var moved = OtherKeyRefusal(Assert.ThrowsAny<CryptographicException>(() => Unprotect(directory, alias, "app-a", payload)));
        Assert.Contains($"was decrypted by KMS key {keyA} (version {keyA}/versions/1), not by the configured key {alias} (which names {keyB})", moved.Message, StringComparison.Ordinal);
        Assert.Contains("list it in KmsDataProtectionOptions.AdditionalDecryptionKeys", moved.Message, StringComparison.Ordinal);
        using var listed = Provider(directory, alias, "app-a", fixture.AppToken, kms: o => o.AdditionalDecryptionKeys.Add(keyA));
        Assert.Equal("hello", listed.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload));
    }

    // A principal that may read aliases resolves the alias through GetAlias (audited as its own), and
    // the check is the same.
    [Fact]
    public async Task ConfiguredAlias_PrincipalThatMayReadAliases_ResolvedByGetAlias_AnotherKeysEntryRefused()
    {
        var keyA = await CreateKeyAsync();
        var keyB = await CreateKeyAsync();
        var alias = await CreateAliasAsync(keyA);
        var reader = $"dp-alias-reader-{Guid.NewGuid():N}"[..28];
        var token = await fixture.Server.CreatePrincipalWithTokenAsync(reader, "dev", "key-user", "auditor");
        var directory = NewKeyDirectory();
        var payload = Protect(directory, alias, "app-a", "hello");
        Assert.Equal("hello", Unprotect(directory, alias, "app-a", payload, token));
        await ReEncryptUnderAsync(Assert.Single(Directory.GetFiles(directory, "key-*.xml")), keyB, "app-a");

        var refusal = OtherKeyRefusal(Assert.ThrowsAny<CryptographicException>(() => Unprotect(directory, alias, "app-a", payload, token)));

        Assert.Contains($"not by the configured key {alias} (which names {keyA})", refusal.Message, StringComparison.Ordinal);
        using var officer = fixture.Server.CreateClient(await fixture.Server.CreatePrincipalWithTokenAsync($"officer-{Guid.NewGuid():N}"[..16], null, "security-officer"));
        var events = (await officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Principal = "token:" + reader, Operation = "/kms.v1.KeyManagementService/GetAlias", PageSize = 1000 })).Events;
        Assert.Contains(events, e => e.Outcome == "OK" && e.Resource == alias);
    }

    // A key switch (ProtectKeysWithKms given another key): the former key's entries are refused, read
    // again once it is listed in AdditionalDecryptionKeys.
    [Fact]
    public async Task KeySwitch_TheFormerKeysEntries_RefusedUnlessListedInAdditionalDecryptionKeys()
    {
        var keyA = await CreateKeyAsync();
        var keyB = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        var payload = Protect(directory, keyA, "app-a", "hello");

        var refusal = OtherKeyRefusal(Assert.ThrowsAny<CryptographicException>(() => Unprotect(directory, keyB, "app-a", payload)));
        Assert.Contains($"was decrypted by KMS key {keyA} (version {keyA}/versions/1), not by the configured key {keyB}:", refusal.Message, StringComparison.Ordinal);

        using var listed = Provider(directory, keyB, "app-a", fixture.AppToken, kms: o => o.AdditionalDecryptionKeys.Add(keyA));
        var protector = listed.GetRequiredService<IDataProtectionProvider>().CreateProtector("test");
        Assert.Equal("hello", protector.Unprotect(payload));
        Assert.Equal("again", protector.Unprotect(protector.Protect("again")));
    }

    [Theory]
    [InlineData("tenants/dev/aliases/former", "an alias is not taken there")]
    [InlineData("dataprotection", "is not a KMS key name")]
    public void AdditionalDecryptionKeys_NotAKeyName_RefusedAtProtectKeysWithKms(string name, string expected)
    {
        var services = new ServiceCollection();

        var e = Assert.Throws<ArgumentException>(() => services.AddDataProtection().ProtectKeysWithKms("tenants/dev/keys/dp", o => o.AdditionalDecryptionKeys.Add(name)));

        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Contains("KmsDataProtectionOptions.AdditionalDecryptionKeys", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ProtectKeysWithKms_KeyNameNeitherKeyNorAlias_Refused()
    {
        var e = Assert.Throws<ArgumentException>(() => new ServiceCollection().AddDataProtection().ProtectKeysWithKms("tenants/dev/keyring/dp"));

        Assert.Contains("is not a KMS key or alias name", e.Message, StringComparison.Ordinal);
    }

    // Without PersistKeysTo... Data Protection picks a fallback repository inside its key manager, which
    // ProtectKeysWithKms cannot wrap to tell each entry which key it stands under: no key is written.
    [Fact]
    public async Task NoRepositoryConfigured_NoKeyWritten_NamingPersistKeysTo()
    {
        var key = await CreateKeyAsync();
        var services = new ServiceCollection().AddKmsClient(o =>
        {
            o.Endpoint = fixture.Server.Address;
            o.CaCertificatePath = fixture.Server.CaCertificatePath;
            o.ApiToken = fixture.AppToken;
        });
        services.AddDataProtection().SetApplicationName("app-a").ProtectKeysWithKms(key);
        using var provider = services.BuildServiceProvider();

        var thrown = Assert.ThrowsAny<Exception>(() => provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect("hello"));

        Assert.Contains(Chain(thrown), e => e is InvalidOperationException && e.Message.Contains("call PersistKeysToFileSystem(...)", StringComparison.Ordinal));
    }

    private async Task<string> CreateKeyAsync()
    {
        using var client = fixture.Server.CreateClient();
        return (await client.CreateKeyAsync("tenants/dev", $"dp-{Guid.NewGuid():N}")).Name;
    }

    private async Task<string> CreateAliasAsync(string key)
    {
        using var client = fixture.Server.CreateClient();
        return (await client.CreateAliasAsync("tenants/dev", $"dp-{Guid.NewGuid():N}", key)).Name;
    }

    // What a writer with ENCRYPT on another key does: the entry of file's key, encrypted under that key
    // with the application's full context (the writer here learns the genuine secret from the KMS; its
    // own would do). Returns the secret (the base64 master key), to look for where it must not be.
    private async Task<string> ReEncryptUnderAsync(string file, string otherKey, string application)
    {
        var document = XDocument.Load(file);
        var entry = document.Descendants("kmsEncryptedKey").Single();
        var context = BoundContext(document.Root!, application);
        using var client = fixture.Server.CreateClient(fixture.AppToken);
        using var decrypted = await client.DecryptAsync(Convert.FromBase64String((string)entry.Element("ciphertext")!), context);
        var reEncrypted = await client.EncryptAsync(otherKey, decrypted.Plaintext.ToArray(), context);
        entry.Element("ciphertext")!.Value = Convert.ToBase64String(reEncrypted.Ciphertext);
        document.Save(file);
        return (string)XElement.Parse(Encoding.UTF8.GetString(decrypted.Plaintext)).Element("value")!;
    }

    // The decryptor's refusal of an entry another KMS key decrypted, somewhere in the chain.
    private static CryptographicException OtherKeyRefusal(Exception thrown) =>
        Chain(thrown).OfType<CryptographicException>().FirstOrDefault(e => e.Message.Contains(") was decrypted by KMS key ", StringComparison.Ordinal))
        ?? throw new Xunit.Sdk.XunitException("not refused as an entry of another KMS key: " + thrown);

    // A new key, a ring directory whose one key an application "app-a" protected "hello" under, and
    // that key's file loaded: what each test that tampers with the stored entry starts from.
    private async Task<(string Key, string Directory, string Payload, string File, XDocument Document)> ProtectedKeyFileAsync()
    {
        var key = await CreateKeyAsync();
        var directory = NewKeyDirectory();
        var payload = Protect(directory, key, "app-a", "hello");
        var file = Assert.Single(Directory.GetFiles(directory, "key-*.xml"));
        return (key, directory, payload, file, XDocument.Load(file));
    }

    private static string NewKeyDirectory() => Scratch.NewPath("dp-keys-");

    private string Protect(string directory, string key, string application, string text, string? contentRoot = null)
    {
        using var provider = Provider(directory, key, application, fixture.AppToken, contentRoot);
        return provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect(text);
    }

    // The first key's kmsEncryptedKey element, as the key manager reads it (through the repository ProtectKeysWithKms wraps).
    private static XElement EncryptedEntry(ServiceProvider provider) =>
        provider.GetRequiredService<IOptions<KeyManagementOptions>>().Value.XmlRepository!.GetAllElements().Descendants("kmsEncryptedKey").First();

    // The context a format 3 entry of this <key> is encrypted under, built by hand from the key element
    // (the descriptor's settings digest as the entry states it; the KMS checks it).
    private static Dictionary<string, string> BoundContext(XElement key, string application) => new(StringComparer.Ordinal)
    {
        ["purpose"] = "aspnetcore-dataprotection",
        ["application"] = application,
        ["dataprotection-key-id"] = ((Guid)key.Attribute("id")!).ToString("D"),
        ["dataprotection-key-created"] = Instant(key, "creationDate"),
        ["dataprotection-key-activated"] = Instant(key, "activationDate"),
        ["dataprotection-key-expires"] = Instant(key, "expirationDate"),
        ["dataprotection-key-deserializer"] = (string)key.Element("descriptor")!.Attribute("deserializerType")!,
        ["dataprotection-key-descriptor"] = (string)key.Descendants("kmsEncryptedKey").Single().Attribute("descriptor")!,
    };

    private static string Instant(XElement key, string date) =>
        ((DateTimeOffset)key.Element(date)!).UtcDateTime.ToString("O", System.Globalization.CultureInfo.InvariantCulture);

    // The key id in a protected payload's header (after the 4-byte magic header), the key it was protected under.
    private static Guid KeyIdOf(byte[] payload) => new(payload.AsSpan(4, 16));

    // A Data Protection of its own over directory, without ProtectKeysWithKms (as an application before it,
    // or a repository writer making a key): its keys are written unencrypted, or through encryptor.
    private static ServiceProvider PlainProvider(string directory, IXmlEncryptor? encryptor)
    {
        var services = new ServiceCollection();
        services.AddDataProtection().SetApplicationName("app-a").PersistKeysToFileSystem(new DirectoryInfo(directory));
        if (encryptor is not null)
        {
            services.Configure<KeyManagementOptions>(o => o.XmlEncryptor = encryptor);
        }

        return services.BuildServiceProvider();
    }

    // A repository writer's key, made by a Data Protection of its own (the XML shape it writes), activated a
    // second after the one genuine key in directory so that it would be the default, and its file copied
    // there. Returns its id, a payload the writer protected under it, and its secret (the base64 master key).
    private static (Guid KeyId, byte[] Forged, string Secret) PlantKey(string directory, IXmlEncryptor? encryptor)
    {
        var genuine = XDocument.Load(Assert.Single(Directory.GetFiles(directory, "key-*.xml")));
        var activation = (DateTimeOffset)genuine.Root!.Element("activationDate")!;
        var writerDirectory = NewKeyDirectory();
        using var writer = PlainProvider(writerDirectory, encryptor);
        var plantedKey = writer.GetRequiredService<IKeyManager>().CreateNewKey(activation.AddSeconds(1), activation.AddDays(90));
        var forged = writer.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Protect(Encoding.UTF8.GetBytes("forged"));
        Assert.Equal(plantedKey.KeyId, KeyIdOf(forged));
        var file = Assert.Single(Directory.GetFiles(writerDirectory, "key-*.xml"));
        var secret = (string)XDocument.Load(file).Descendants("masterKey").Single().Element("value")!;
        File.Copy(file, Path.Combine(directory, Path.GetFileName(file)));
        return (plantedKey.KeyId, forged, secret);
    }

    private string Unprotect(string directory, string key, string application, string payload, string? token = null, string? contentRoot = null)
    {
        using var provider = Provider(directory, key, application, token ?? fixture.AppToken, contentRoot);
        return provider.GetRequiredService<IDataProtectionProvider>().CreateProtector("test").Unprotect(payload);
    }

    // application: SetApplicationName's argument (null: not called); contentRoot: the host's (null: no host environment).
    // client: more client options; services: more registrations (loggers); kms: more ProtectKeysWithKms options.
    private ServiceProvider Provider(
        string directory, string key, string? application, string token, string? contentRoot = null, string? kmsApplicationName = null,
        Action<KmsClientOptions>? client = null, Action<IServiceCollection>? services = null, Action<KmsDataProtectionOptions>? kms = null)
    {
        var collection = new ServiceCollection().AddKmsClient(o =>
        {
            o.Endpoint = fixture.Server.Address;
            o.CaCertificatePath = fixture.Server.CaCertificatePath;
            o.ApiToken = token;
            client?.Invoke(o);
        });
        services?.Invoke(collection);
        if (contentRoot is not null)
        {
            collection.AddSingleton<IHostEnvironment>(new ContentRootOnly(contentRoot));
        }

        var dataProtection = collection.AddDataProtection();
        if (application is not null)
        {
            dataProtection.SetApplicationName(application);
        }

        dataProtection
            .PersistKeysToFileSystem(new DirectoryInfo(directory))
            .ProtectKeysWithKms(key, o =>
            {
                o.ApplicationName = kmsApplicationName;
                kms?.Invoke(o);
            });
        return collection.BuildServiceProvider();
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

    // A key-user the key's policy lets encrypt only (the application's principal keeps both).
    private async Task<string> EncryptOnlyPrincipalAsync(string key)
    {
        var encryptOnly = $"dp-encrypt-only-{Guid.NewGuid():N}"[..28];
        var token = await fixture.Server.CreatePrincipalWithTokenAsync(encryptOnly, "dev", "key-user");
        using var developer = fixture.Server.CreateClient();
        await developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
        {
            Name = key,
            Entries =
            {
                new KeyPolicyEntry { Principal = fixture.AppPrincipal, Operations = { "ENCRYPT", "DECRYPT" } },
                new KeyPolicyEntry { Principal = "token:" + encryptOnly, Operations = { "ENCRYPT" } },
            },
        });
        return token;
    }

    private static IEnumerable<Exception> Chain(Exception thrown)
    {
        for (Exception? e = thrown; e is not null; e = e.InnerException)
        {
            yield return e;
            if (e is AggregateException aggregate)
            {
                foreach (var inner in aggregate.InnerExceptions.SelectMany(Chain))
                {
                    yield return inner;
                }
            }
        }
    }

    // Decrypt of one ciphertext gets DeadlineExceeded, as if the KMS never answered, until Answer is set.
    private sealed class NoAnswerForDecryptOf(byte[] ciphertext) : Interceptor
    {
        public volatile bool Answer;

        public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context, AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
        {
            if (!Answer && request is DecryptRequest decrypt && decrypt.Ciphertext.Span.SequenceEqual(ciphertext))
            {
                throw new RpcException(new Status(StatusCode.DeadlineExceeded, "no answer (test)"));
            }

            return continuation(request, context);
        }
    }

    private sealed class CapturedLogs : ILoggerProvider
    {
        private readonly System.Collections.Concurrent.ConcurrentQueue<(LogLevel Level, int EventId, string Text)> _entries = new();

        public IReadOnlyCollection<(LogLevel Level, int EventId, string Text)> Entries => _entries;

        public string AllText => string.Join('\n', _entries.Select(e => e.Text));

        public ILogger CreateLogger(string categoryName) => new Logger(_entries);

        public void Dispose()
        {
        }

        private sealed class Logger(System.Collections.Concurrent.ConcurrentQueue<(LogLevel Level, int EventId, string Text)> entries) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                entries.Enqueue((logLevel, eventId.Id, formatter(state, exception) + "\n" + exception));
        }
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
