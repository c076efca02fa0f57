using System.Security.Cryptography;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Kms.Client.Failover;
using Kms.Client.Tests.Failover;
using Kms.Contracts.V1;

namespace Kms.Client.Tests;

/// <summary>
/// <see cref="BlindIndex.ComputeManyAsync(IReadOnlyList{string}, CancellationToken)"/> when a later
/// BatchGenerateMac fails — the call refused, or one value in it — over a scripted transport whose
/// "MAC" is SHA-256 of the input: a <see cref="BlindIndexBatchException"/> with the KMS's status and
/// trailers, naming the values, holding the beacons computed before them (equal to a full run's),
/// and every buffer that held a value zeroed.
/// </summary>
public sealed class BlindIndexBatchFailureTests
{
    private const string Version = "tenants/dev/keys/users-index/versions/1";
    // A hang guard in real time, not a bound on how fast (the calls run on a fake clock): the
    // suite's other classes hold thread-pool threads, and under CI's full run 10 s ran out once
    // for a step that needed the pool (DataKeyCacheDisposeTests, 70b7228).
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);
    private static readonly List<string> Values = [.. Enumerable.Range(0, 1205).Select(i => $"user{i}@example.com")];

    public static TheoryData<string, RpcException?, int?, StatusCode, string, int> SecondBatchFails => new()
    {
        { "the call refused", new RpcException(new Status(StatusCode.PermissionDenied, "the caller may not use the key")), null, StatusCode.PermissionDenied, "values 1000 to 1204: the caller may not use the key", 1000 },
        { "the call refused for a quota, its delay past MaxRetryInfoDelay", ScriptedEndpoint.QuotaUsedUp(TimeSpan.FromMinutes(10)), null, StatusCode.ResourceExhausted, "values 1000 to 1204: the crypto-operation quota of tenants/dev is used up", 1000 },
        { "value 3 of the call refused", null, 3, StatusCode.FailedPrecondition, "value 1003: the key version is disabled", 1003 },
    };

    [Theory]
    [MemberData(nameof(SecondBatchFails))]
    public async Task SecondBatchFails_TheBeaconsBeforeItKept_TheValuesNamed_EveryBufferZeroed_ResumableFromThere(
        string what, RpcException? callRefusal, int? refusedItem, StatusCode code, string detail, int failedAt)
    {
        var batches = 0;
        var endpoint = new ScriptedEndpoint("kms") { Respond = call => ++batches == 2 ? Answer(call, callRefusal, refusedItem) : Answer(call) };
        using var fake = new FakeClient([endpoint]);
        var index = new BlindIndex(fake.Client, Version, "users.email", 64);

        var e = await Assert.ThrowsAsync<BlindIndexBatchException>(() => index.ComputeManyAsync(Values).WaitAsync(Patience));

        Assert.True(code == e.StatusCode, what);
        Assert.Equal(detail, e.Status.Detail);
        Assert.Equal(failedAt, e.FailedValueIndex);
        var full = await FullRunAsync();
        Assert.Equal(full.Take(failedAt), e.ComputedBeacons);
        if (callRefusal?.StatusCode == StatusCode.ResourceExhausted)
        {
            Assert.Equal(TimeSpan.MaxValue, RetrySafety.RetryInfoDelay(e, TimeSpan.FromSeconds(5))); // the RetryInfo came along
        }

        // Two calls (1,000 and 205 values), each buffer zeroed, the refused call's too.
        var sent = endpoint.Received.Select(c => (BatchGenerateMacRequest)c.Request).ToList();
        Assert.Equal([1000, 205], sent.Select(r => r.Requests.Count));
        Assert.All(sent.SelectMany(r => r.Requests), r => Assert.False(r.Data.Span.ContainsAnyExcept((byte)0), "a MAC input was not zeroed"));

        // What a backfill does with it: keep those, go on from the first value without a beacon.
        var rest = await new BlindIndex(Working().Client, Version, "users.email", 64).ComputeManyAsync(Values[e.FailedValueIndex..]);
        Assert.Equal(full, [.. e.ComputedBeacons, .. rest]);
    }

    [Fact]
    public async Task FirstBatchRefused_NoBeacon_AllValuesOfTheCallNamed()
    {
        var endpoint = new ScriptedEndpoint("kms") { Respond = call => Answer(call, new RpcException(new Status(StatusCode.PermissionDenied, "no"))) };
        using var fake = new FakeClient([endpoint]);

        var e = await Assert.ThrowsAsync<BlindIndexBatchException>(() => new BlindIndex(fake.Client, Version, "users.email", 16).ComputeManyAsync(["a", "b"]).WaitAsync(Patience));

        Assert.Equal("values 0 to 1: no", e.Status.Detail);
        Assert.Equal(0, e.FailedValueIndex);
        Assert.Empty(e.ComputedBeacons);
    }

    [Fact]
    public async Task ValueChangedBetweenTheCheckAndTheCall_Refused_NothingSent_NoUninitialisedBytes()
    {
        // A list read twice (lengths first, then the bytes) whose value 1 is shorter the second time:
        // the rest of its buffer would have been whatever memory the allocator gave.
        var endpoint = new ScriptedEndpoint("kms") { Respond = call => Answer(call) };
        using var fake = new FakeClient([endpoint]);
        var index = new BlindIndex(fake.Client, Version, "users.email", 16);

        var bytes = await Assert.ThrowsAsync<InvalidOperationException>(() => index.ComputeManyAsync(new Shrinking<ReadOnlyMemory<byte>>(new byte[5], new byte[10], new byte[3])));
        var strings = await Assert.ThrowsAsync<InvalidOperationException>(() => index.ComputeManyAsync(new Shrinking<string>("a", "bbbbbbbbbb", "ccc")));

        Assert.StartsWith("value 1 changed", bytes.Message, StringComparison.Ordinal);
        Assert.StartsWith("value 1 changed", strings.Message, StringComparison.Ordinal);
        Assert.Equal(0, endpoint.Calls);
    }

    private static FakeClient Working() => new([new ScriptedEndpoint("kms") { Respond = call => Answer(call) }]);

    private static async Task<IReadOnlyList<string>> FullRunAsync()
    {
        using var fake = Working();
        return await new BlindIndex(fake.Client, Version, "users.email", 64).ComputeManyAsync(Values);
    }

    // A KMS whose MAC is SHA-256 of the input; the call refused with `callRefusal`, or its item `item`.
    private static BatchGenerateMacResponse Answer(ReceivedCall call, RpcException? callRefusal = null, int? item = null)
    {
        var request = (BatchGenerateMacRequest)call.Request;
        if (callRefusal is not null)
        {
            throw callRefusal;
        }

        var response = new BatchGenerateMacResponse();
        for (var i = 0; i < request.Requests.Count; i++)
        {
            response.Results.Add(i == item
                ? new BatchGenerateMacResult { Index = (uint)i, Status = new ItemStatus { Code = (int)StatusCode.FailedPrecondition, Message = "the key version is disabled" } }
                : new BatchGenerateMacResult { Index = (uint)i, Response = new GenerateMacResponse { KeyVersion = Version, Mac = ByteString.CopyFrom(SHA256.HashData(request.Requests[i].Data.Span)) } });
        }

        return response;
    }

    /// <summary>Answers each item as given, but item 1 cut to one byte (or character) once it has been read.</summary>
    private sealed class Shrinking<T>(params T[] items) : IReadOnlyList<T>
    {
        private readonly HashSet<int> _read = [];

        public int Count => items.Length;

        public T this[int index] => _read.Add(index) || index != 1 ? items[index] : Cut(items[index]);

        public IEnumerator<T> GetEnumerator() => ((IEnumerable<T>)items).GetEnumerator();

        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

        private static T Cut(T item) => item switch
        {
            ReadOnlyMemory<byte> bytes => (T)(object)bytes[..1],
            string text => (T)(object)text[..1],
            _ => item,
        };
    }
}
