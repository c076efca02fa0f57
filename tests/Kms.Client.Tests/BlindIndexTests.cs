using System.Buffers.Binary;
using System.Diagnostics.Metrics;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Client.Tests.Failover;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.Logging;

namespace Kms.Client.Tests;

/// <summary>
/// <see cref="BlindIndex"/> against the real server on SoftHSM. The key's material is in the HSM,
/// so a beacon is checked against the server's own GenerateMac of the layout docs/client.md
/// specifies, built here by hand.
/// </summary>
public sealed class BlindIndexTests(ClientServerFixture fixture) : IClassFixture<ClientServerFixture>
{
    private const string Canary = "CANARY-INDEXED-7Q2x@example.com";

    [Theory]
    [InlineData(8)]
    [InlineData(16)]
    [InlineData(72)]
    [InlineData(256)]
    public async Task Beacon_IsTheKmsMacOfTheDocumentedLayout_TruncatedToItsBits_LowercaseHex(int bits)
    {
        using var client = fixture.Server.CreateClient();
        var version = await MacVersionAsync(client);
        var index = new BlindIndex(client, version, "users.email", bits);

        var beacon = await index.ComputeAsync("alice@example.com");

        var mac = await client.GenerateMacAsync(version, Layout("users.email", bits, "alice@example.com"u8));
        Assert.Equal(Convert.ToHexStringLower(mac.AsSpan(0, bits / 8)), beacon);
        Assert.Equal(bits / 4, beacon.Length);
    }

    [Fact]
    public async Task StringOverload_IsTheUtf8OfTheValue_AsItIs()
    {
        using var client = fixture.Server.CreateClient();
        var version = await MacVersionAsync(client);
        var index = new BlindIndex(client, version, "users.name", 128);

        Assert.Equal(await index.ComputeAsync(Encoding.UTF8.GetBytes("Zo\u00eb")), await index.ComputeAsync("Zo\u00eb"));
        var mac = await client.GenerateMacAsync(version, Layout("users.name", 128, Encoding.UTF8.GetBytes("Zo\u00eb")));
        Assert.Equal(Convert.ToHexStringLower(mac.AsSpan(0, 16)), await index.ComputeAsync("Zo\u00eb"));

        // No normalisation: another case or form is another value (the caller normalises).
        Assert.NotEqual(await index.ComputeAsync("Zo\u00eb"), await index.ComputeAsync("zo\u00eb"));
        Assert.NotEqual(await index.ComputeAsync("Zo\u00eb"), await index.ComputeAsync("Zoe\u0308"));
        Assert.Equal(await index.ComputeAsync(""), await index.ComputeAsync(ReadOnlyMemory<byte>.Empty));
    }

    [Fact]
    public async Task EqualValues_EqualBeacons_AcrossInstancesAndClients_OtherValuesOther()
    {
        using var client = fixture.Server.CreateClient();
        using var other = fixture.Server.CreateClient();
        var version = await MacVersionAsync(client);

        var first = await new BlindIndex(client, version, "users.email", 128).ComputeAsync("bob@example.com");
        var again = await new BlindIndex(other, version, "users.email", 128).ComputeAsync("bob@example.com");
        var another = await new BlindIndex(client, version, "users.email", 128).ComputeAsync("bob@example.org");

        Assert.Equal(first, again);
        Assert.NotEqual(first, another);
    }

    /// <summary>Names of one length, so that only the name's bytes tell the inputs apart.</summary>
    [Fact]
    public async Task TwoIndexesOnOneKeyVersion_NeverShareBeacons()
    {
        using var client = fixture.Server.CreateClient();
        var version = await MacVersionAsync(client);

        var email = await new BlindIndex(client, version, "users.email", 128).ComputeAsync("same");
        var phone = await new BlindIndex(client, version, "users.phone", 128).ComputeAsync("same");

        Assert.NotEqual(email, phone);
    }

    /// <summary>The index name is length-prefixed: ("ab", "c") and ("a", "bc") are not one MAC input.</summary>
    [Fact]
    public async Task NameAndValue_TheBoundaryMoved_OtherBeacons()
    {
        using var client = fixture.Server.CreateClient();
        var version = await MacVersionAsync(client);

        var abC = await new BlindIndex(client, version, "ab", 256).ComputeAsync("c");
        var aBc = await new BlindIndex(client, version, "a", 256).ComputeAsync("bc");

        Assert.NotEqual(abC, aBc);
    }

    /// <summary>The length is in the MAC input: a short beacon is no prefix of a longer one of the same index name.</summary>
    [Fact]
    public async Task Bits_InTheMacInput_AShortBeaconIsNoPrefixOfALongOne()
    {
        using var client = fixture.Server.CreateClient();
        var version = await MacVersionAsync(client);

        var short128 = await new BlindIndex(client, version, "users.email", 128).ComputeAsync("carol@example.com");
        var long256 = await new BlindIndex(client, version, "users.email", 256).ComputeAsync("carol@example.com");

        Assert.False(long256.StartsWith(short128, StringComparison.Ordinal), "the 128-bit beacon is the 256-bit one's prefix");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-8)]
    [InlineData(7)]
    [InlineData(9)]
    [InlineData(12)]
    [InlineData(255)]
    [InlineData(264)]
    [InlineData(int.MaxValue)]
    public void Bits_OutOfRangeOrNotAMultipleOf8_ArgumentOutOfRange(int bits)
    {
        using var client = fixture.Server.CreateClient();

        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new BlindIndex(client, "tenants/dev/keys/k/versions/1", "users.email", bits));

        Assert.Equal("bits", e.ParamName);
    }

    [Theory]
    [InlineData("tenants/dev/keys/k")]
    [InlineData("tenants/dev/aliases/k")]
    [InlineData("tenants/dev/keys/k/versions/0")]
    [InlineData("tenants/dev/keys/k/versions/01")]
    [InlineData("")]
    public void KeyOrAliasOrNoVersion_Refused_SayingWhyAVersion(string name)
    {
        using var client = fixture.Server.CreateClient();

        var e = Assert.Throws<ArgumentException>(() => new BlindIndex(client, name, "users.email", 16));

        Assert.Equal("keyVersionName", e.ParamName);
        Assert.Contains("rotates", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("")]
    [InlineData("users\n.email")]
    [InlineData("lone surrogate")]
    public void IndexName_EmptyControlOrNoUtf8_Refused(string indexName)
    {
        using var client = fixture.Server.CreateClient();
        indexName = indexName == "lone surrogate" ? "users.\ud800" : indexName;

        var e = Assert.Throws<ArgumentException>(() => new BlindIndex(client, "tenants/dev/keys/k/versions/1", indexName, 16));

        Assert.Equal("indexName", e.ParamName);
    }

    [Fact]
    public void IndexName_255Utf8Bytes_Taken_256Refused()
    {
        using var client = fixture.Server.CreateClient();

        Assert.Equal(new string('n', 255), new BlindIndex(client, "tenants/dev/keys/k/versions/1", new string('n', 255), 16).IndexName);
        Assert.Throws<ArgumentException>(() => new BlindIndex(client, "tenants/dev/keys/k/versions/1", new string('n', 254) + "é", 16));
    }

    [Fact]
    public async Task Value_TheLongestTheKmsTakes_Computed_OneByteMoreRefusedBeforeTheCall()
    {
        using var client = fixture.Server.CreateClient();
        var index = new BlindIndex(client, await MacVersionAsync(client), "users.email", 16);

        Assert.Equal(65_536 - 18 - 4 - "users.email".Length, index.MaxValueBytes);
        Assert.Equal(4, (await index.ComputeAsync(new byte[index.MaxValueBytes])).Length);
        var e = await Assert.ThrowsAsync<ArgumentException>(() => index.ComputeAsync(new byte[index.MaxValueBytes + 1]));
        Assert.Equal("value", e.ParamName);
    }

    /// <summary>Rotating the key leaves the index as it was: it is tied to its version, not to the key's primary.</summary>
    [Fact]
    public async Task KeyRotated_BeaconsUnchanged()
    {
        using var client = fixture.Server.CreateClient();
        var version = await MacVersionAsync(client);
        var index = new BlindIndex(client, version, "users.email", 64);
        var before = await index.ComputeAsync("dave@example.com");

        var rotated = await client.RotateKeyAsync(version[..version.IndexOf("/versions/", StringComparison.Ordinal)]);

        Assert.NotEqual(version, rotated.Primary.Name);
        Assert.Equal(before, await index.ComputeAsync("dave@example.com"));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(16)]
    [InlineData(31)]
    [InlineData(33)]
    [InlineData(64)]
    public async Task Answer_MacOfAnotherLength_Refused(int length)
    {
        using var plain = fixture.Server.CreateClient();
        var version = await MacVersionAsync(plain);
        using var client = Client(new Answers<GenerateMacResponse>(answer => answer.Mac = ByteString.CopyFrom(new byte[length])));
        var index = new BlindIndex(client, version, "users.email", 8);

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => index.ComputeAsync("erin@example.com"));

        Assert.Contains($"{length}-byte MAC", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("/versions/2")]
    [InlineData("-other/versions/1")]
    [InlineData("")]
    public async Task Answer_ForAnotherKeyVersion_Refused(string otherSuffix)
    {
        using var plain = fixture.Server.CreateClient();
        var version = await MacVersionAsync(plain);
        var key = version[..version.IndexOf("/versions/", StringComparison.Ordinal)];
        var other = otherSuffix.Length == 0 ? "" : key + otherSuffix;
        using var client = Client(new Answers<GenerateMacResponse>(answer => answer.KeyVersion = other));
        var index = new BlindIndex(client, version, "users.email", 8);

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => index.ComputeAsync("frank@example.com"));

        Assert.Contains($"asked for a MAC by {version}, the KMS answered for {other}", e.Message, StringComparison.Ordinal);
    }

    /// <summary>The MAC input holds the value: the SDK's buffer of it is zeroed once the call ends, answered or refused.</summary>
    [Fact]
    public async Task Request_TheBufferHoldingTheValue_ZeroedWhenTheCallEnds()
    {
        using var plain = fixture.Server.CreateClient();
        var version = await MacVersionAsync(plain);
        var aes = (await plain.CreateKeyAsync("tenants/dev", $"bi-aes-{Guid.NewGuid():N}"[..20])).Primary.Name;
        var sent = new MacRequests();
        using var client = Client(sent);

        await new BlindIndex(client, version, "users.email", 16).ComputeAsync(Canary);
        await Assert.ThrowsAsync<RpcException>(() => new BlindIndex(client, aes, "users.email", 16).ComputeAsync(Encoding.UTF8.GetBytes(Canary)));

        Assert.Equal(2, sent.Data.Count);
        Assert.All(sent.Data, data => Assert.False(data.Span.ContainsAnyExcept((byte)0), "the MAC input was not zeroed"));
    }

    /// <summary>The KMS's refusals reach the caller as they are: an AES key, a caller without kms.crypto.sign.</summary>
    [Fact]
    public async Task KmsRefusals_PassThrough_AesKeyAndNoSignPermission()
    {
        using var client = fixture.Server.CreateClient();
        var aes = (await client.CreateKeyAsync("tenants/dev", $"bi-aes-{Guid.NewGuid():N}"[..20])).Primary.Name;

        var wrongPurpose = await Assert.ThrowsAsync<RpcException>(() => new BlindIndex(client, aes, "users.email", 16).ComputeAsync("grace@example.com"));
        Assert.Equal(StatusCode.FailedPrecondition, wrongPurpose.StatusCode);
        Assert.Contains("not MAC", wrongPurpose.Status.Detail, StringComparison.Ordinal);

        var version = await MacVersionAsync(client);
        using var auditor = fixture.Server.CreateClient(await fixture.Server.CreatePrincipalWithTokenAsync($"bi-aud-{Guid.NewGuid():N}"[..20], "dev", "auditor"));
        var denied = await Assert.ThrowsAsync<RpcException>(() => new BlindIndex(auditor, version, "users.email", 16).ComputeAsync("grace@example.com"));
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        Assert.Contains("kms.crypto.sign", denied.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task HmacSha512Version_RefusedAsNoHmacSha256()
    {
        using var client = fixture.Server.CreateClient();
        var version = (await client.CreateKeyAsync("tenants/dev", $"bi-512-{Guid.NewGuid():N}"[..20], KeyPurpose.Mac, KeyAlgorithm.HmacSha512)).Primary.Name;

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => new BlindIndex(client, version, "users.email", 16).ComputeAsync("heidi@example.com"));

        Assert.Contains("64-byte MAC", e.Message, StringComparison.Ordinal);
        Assert.Contains("HMAC_SHA256", e.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// The indexed value (raw, hex, base64) is in no exception, log line or metric of the SDK,
    /// whatever becomes of the call: computed, refused by the KMS, a wrong answer refused, too
    /// long, or no UTF-8.
    /// </summary>
    [Fact]
    public async Task Canary_TheValueIsInNoExceptionLogOrMetric()
    {
        var sink = new LogSink();
        using var factory = LoggerFactory.Create(b => b.AddProvider(sink).SetMinimumLevel(LogLevel.Trace));
        var measured = new List<string>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == ClientMetrics.MeterName)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, _, tags, _) => measured.Add(instrument.Name + string.Join(",", tags.ToArray().Select(t => $"{t.Key}={t.Value}"))));
        listener.Start();

        using var developer = fixture.Server.CreateClient();
        var version = await MacVersionAsync(developer);
        var aes = (await developer.CreateKeyAsync("tenants/dev", $"bi-aes-{Guid.NewGuid():N}"[..20])).Primary.Name;
        var wrongLength = new Answers<GenerateMacResponse>(answer => answer.Mac = ByteString.CopyFrom(new byte[16]));
        var wrongKey = new Answers<GenerateMacResponse>(answer => answer.KeyVersion = "tenants/dev/keys/elsewhere/versions/1");
        var caught = new List<Exception>();
        foreach (var (client, name) in new[] { (Client(null, factory), version), (Client(null, factory), aes), (Client(wrongLength, factory), version), (Client(wrongKey, factory), version) })
        {
            using (client)
            {
                var index = new BlindIndex(client, name, "users.email", 32);
                try
                {
                    await index.ComputeAsync(Canary);
                    await index.ComputeAsync(Encoding.UTF8.GetBytes(Canary));
                }
                catch (Exception e) when (e is RpcException or InvalidOperationException)
                {
                    caught.Add(e);
                }

                caught.Add(await Assert.ThrowsAsync<ArgumentException>(() => index.ComputeAsync(Canary + new string('x', index.MaxValueBytes))));
                caught.Add(await Assert.ThrowsAsync<ArgumentException>(() => index.ComputeAsync(Canary + "\ud800" + Canary)));
            }
        }

        Assert.Equal(3 * 1 + 4 * 2, caught.Count);
        var places = caught.Select(e => e.ToString())
            .Concat(caught.OfType<RpcException>().Select(e => e.Status.Detail + e.Trailers))
            .Concat(sink.Events.Select(e => e.Message))
            .Concat(measured)
            .ToList();
        var value = Encoding.UTF8.GetBytes(Canary);
        string[] forms = [Canary, "INDEXED-7Q2x", Convert.ToHexString(value), Convert.ToHexStringLower(value), Convert.ToBase64String(value), Convert.ToBase64String(value)[..20]];
        Assert.All(places, place => Assert.All(forms, form => Assert.DoesNotContain(form, place, StringComparison.Ordinal)));
        Assert.Contains(caught, e => e is RpcException { StatusCode: StatusCode.FailedPrecondition });
    }

    /// <summary>
    /// ComputeManyAsync: each beacon is the single call's, in order, in BatchGenerateMac calls of
    /// at most 1,000 values and 4 MiB of MAC input.
    /// </summary>
    [Fact]
    public async Task ComputeMany_EachBeaconTheSingleCalls_InOrder_ChunkedAtTheServersItemLimit()
    {
        using var plain = fixture.Server.CreateClient();
        var version = await MacVersionAsync(plain);
        var calls = new BatchMacCalls();
        using var client = Client(calls);
        var index = new BlindIndex(client, version, "users.email", 64);
        var values = Enumerable.Range(0, 1205).Select(i => $"user{i}@example.com").ToList();

        var beacons = await index.ComputeManyAsync(values);

        Assert.Equal([1000, 205], calls.Items);
        Assert.Equal(values.Count, beacons.Count);
        Assert.Equal(values.Count, beacons.Distinct().Count());
        foreach (var i in new[] { 0, 1, 999, 1000, 1204 })
        {
            Assert.Equal(await new BlindIndex(plain, version, "users.email", 64).ComputeAsync(values[i]), beacons[i]);
        }

        Assert.Equal(beacons.Take(3), await index.ComputeManyAsync(values.Take(3).Select(v => (ReadOnlyMemory<byte>)Encoding.UTF8.GetBytes(v)).ToList()));
        Assert.Empty(await index.ComputeManyAsync(Array.Empty<string>()));
    }

    [Fact]
    public async Task ComputeMany_LongValues_ChunkedAtTheServersByteLimit()
    {
        using var plain = fixture.Server.CreateClient();
        var version = await MacVersionAsync(plain);
        var calls = new BatchMacCalls();
        using var client = Client(calls);
        var index = new BlindIndex(client, version, "users.photo", 16);
        var values = Enumerable.Range(0, 70).Select(i => (ReadOnlyMemory<byte>)Enumerable.Repeat((byte)i, index.MaxValueBytes).ToArray()).ToList();

        var beacons = await index.ComputeManyAsync(values);

        // Each MAC input is 64 KiB: 64 of them are the 4 MiB one call takes.
        Assert.Equal([64, 6], calls.Items);
        Assert.Equal(await index.ComputeAsync(values[69]), beacons[69]);
        Assert.Equal(await index.ComputeAsync(values[0]), beacons[0]);
    }

    /// <summary>Each check on the batch answer, seen to fail: a KMS that answers wrongly is refused, not believed.</summary>
    [Theory]
    [InlineData("swapped", "result 0 answers request 1")]
    [InlineData("one short", "2 results for 3 requests")]
    [InlineData("short mac", "31-byte MAC")]
    [InlineData("other version", "the KMS answered for tenants/dev/keys/elsewhere/versions/1")]
    [InlineData("no response", "neither a MAC nor an error")]
    public async Task ComputeMany_WrongAnswer_Refused(string mutation, string expected)
    {
        using var plain = fixture.Server.CreateClient();
        var version = await MacVersionAsync(plain);
        using var client = Client(new Answers<BatchGenerateMacResponse>(answer =>
        {
            switch (mutation)
            {
                case "swapped":
                    (answer.Results[0], answer.Results[1]) = (answer.Results[1], answer.Results[0]);
                    break;
                case "one short":
                    answer.Results.RemoveAt(2);
                    break;
                case "short mac":
                    answer.Results[1].Response.Mac = ByteString.CopyFrom(new byte[31]);
                    break;
                case "other version":
                    answer.Results[1].Response.KeyVersion = "tenants/dev/keys/elsewhere/versions/1";
                    break;
                default:
                    answer.Results[1].Response = null;
                    break;
            }
        }));
        var index = new BlindIndex(client, version, "users.email", 32);

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => index.ComputeManyAsync(["a@example.com", "b@example.com", "c@example.com"]));

        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Equal(3, (await new BlindIndex(plain, version, "users.email", 32).ComputeManyAsync(["a@example.com", "b@example.com", "c@example.com"])).Count);
    }

    /// <summary>An item the KMS refuses fails the call with its status; every buffer that held a value is zeroed, answered or refused.</summary>
    [Fact]
    public async Task ComputeMany_ItemRefused_ThrowsItsStatus_EveryBufferZeroed_TooLongRefusedBeforeAnyCall()
    {
        using var plain = fixture.Server.CreateClient();
        var version = await MacVersionAsync(plain);
        var aes = (await plain.CreateKeyAsync("tenants/dev", $"bi-aes-{Guid.NewGuid():N}"[..20])).Primary.Name;
        var calls = new BatchMacCalls();
        using var client = Client(calls);

        await new BlindIndex(client, version, "users.email", 16).ComputeManyAsync([Canary, Canary + "2"]);
        var refused = await Assert.ThrowsAsync<BlindIndexBatchException>(() => new BlindIndex(client, aes, "users.email", 16).ComputeManyAsync([Canary]));
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.StartsWith("value 0: ", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("not MAC", refused.Status.Detail, StringComparison.Ordinal);

        Assert.Equal(3, calls.Data.Count);
        Assert.All(calls.Data, data => Assert.False(data.Span.ContainsAnyExcept((byte)0), "a MAC input was not zeroed"));

        var index = new BlindIndex(client, version, "users.email", 16);
        var tooLong = await Assert.ThrowsAsync<ArgumentException>(() => index.ComputeManyAsync(["ok", new string('x', index.MaxValueBytes + 1)]));
        Assert.Equal("values", tooLong.ParamName);
        await Assert.ThrowsAsync<ArgumentException>(() => index.ComputeManyAsync(["ok", "\ud800"]));
        Assert.Equal(2, calls.Items.Count);
    }

    /// <summary>"kms blind index v1" ‖ bits (u16 BE) ‖ name length (u16 BE) ‖ name ‖ value, as docs/client.md gives it.</summary>
    private static byte[] Layout(string indexName, int bits, ReadOnlySpan<byte> value)
    {
        var name = Encoding.UTF8.GetBytes(indexName);
        var layout = new List<byte>();
        layout.AddRange(Encoding.ASCII.GetBytes("kms blind index v1"));
        var length = new byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(length, (ushort)bits);
        layout.AddRange(length);
        BinaryPrimitives.WriteUInt16BigEndian(length, (ushort)name.Length);
        layout.AddRange(length);
        layout.AddRange(name);
        layout.AddRange(value.ToArray());
        return [.. layout];
    }

    private static async Task<string> MacVersionAsync(KmsClient client) =>
        (await client.CreateKeyAsync("tenants/dev", $"bi-{Guid.NewGuid():N}"[..20], KeyPurpose.Mac)).Primary.Name;

    private KmsClient Client(Interceptor? interceptor, ILoggerFactory? loggerFactory = null)
    {
        var options = new KmsClientOptions
        {
            Endpoint = fixture.Server.Address,
            CaCertificatePath = fixture.Server.CaCertificatePath,
            ApiToken = fixture.Server.DeveloperToken,
        };
        if (interceptor is not null)
        {
            options.Interceptors.Add(interceptor);
        }

        return new KmsClient(options, loggerFactory);
    }

    /// <summary>Keeps the data of every GenerateMac request (the SDK's own buffer, which it wraps without copying).</summary>
    private sealed class MacRequests : Interceptor
    {
        public List<ReadOnlyMemory<byte>> Data { get; } = [];

        public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(
            TRequest request,
            ClientInterceptorContext<TRequest, TResponse> context,
            AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
        {
            if (request is GenerateMacRequest mac)
            {
                Data.Add(mac.Data.Memory);
            }

            return continuation(request, context);
        }
    }

    /// <summary>Counts the items of each BatchGenerateMac call and keeps their data (the SDK's own buffers).</summary>
    private sealed class BatchMacCalls : Interceptor
    {
        public List<int> Items { get; } = [];

        public List<ReadOnlyMemory<byte>> Data { get; } = [];

        public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(
            TRequest request,
            ClientInterceptorContext<TRequest, TResponse> context,
            AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
        {
            if (request is BatchGenerateMacRequest batch)
            {
                Items.Add(batch.Requests.Count);
                Data.AddRange(batch.Requests.Select(r => r.Data.Memory));
            }

            return continuation(request, context);
        }
    }

    /// <summary>Changes the real server's answers of type <typeparamref name="TAnswer"/> (GenerateMac, BatchGenerateMac) as <paramref name="change"/> says: a KMS that answers wrongly.</summary>
    private sealed class Answers<TAnswer>(Action<TAnswer> change) : Interceptor
        where TAnswer : class
    {
        public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(
            TRequest request,
            ClientInterceptorContext<TRequest, TResponse> context,
            AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
        {
            var call = continuation(request, context);
            return new AsyncUnaryCall<TResponse>(ChangeAsync(call.ResponseAsync), call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
        }

        private async Task<TResponse> ChangeAsync<TResponse>(Task<TResponse> answer)
        {
            var response = await answer;
            if (response is TAnswer changed)
            {
                change(changed);
            }

            return response;
        }
    }
}
