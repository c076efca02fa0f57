using Google.Protobuf.Reflection;
using Grpc.Core;
using Kms.Client.Failover;
using Kms.Contracts.V1;

namespace Kms.Client.Tests.Failover;

public sealed class RetrySafetyTests
{
    public static TheoryData<string> EveryRpc()
    {
        var data = new TheoryData<string>();
        foreach (var method in Rpcs())
        {
            data.Add(FullName(method));
        }

        return data;
    }

    // A new RPC fails here until someone decides whether repeating it is harmless.
    [Theory]
    [MemberData(nameof(EveryRpc))]
    public void EveryRpc_ClassifiedExactlyOnce(string fullName)
    {
        var method = Rpcs().Single(m => FullName(m) == fullName);
        var withRequestId = method.InputType.FindFieldByName(RetrySafety.RequestIdField) is not null;

        var categories = new[] { withRequestId, RetrySafety.Repeatable.Contains(fullName), RetrySafety.OnceOnly.Contains(fullName) };

        Assert.Equal(1, categories.Count(c => c));
    }

    [Fact]
    public void Tables_NameOnlyExistingRpcs()
    {
        var names = Rpcs().Select(FullName).ToHashSet();
        Assert.All(RetrySafety.Repeatable.Concat(RetrySafety.OnceOnly), n => Assert.Contains(n, names));
    }

    [Fact]
    public void IsRepeatable_RequestIdFilled_OnlyThen()
    {
        var method = Method("/kms.v1.KeyManagementService/RotateKey");
        Assert.False(RetrySafety.IsRepeatable(method, new RotateKeyRequest { Name = "k" }));
        Assert.True(RetrySafety.IsRepeatable(method, new RotateKeyRequest { Name = "k", RequestId = "r" }));
        Assert.True(RetrySafety.IsRepeatable(method, RetrySafety.WithRequestId(new RotateKeyRequest { Name = "k" })));
    }

    [Fact]
    public void IsRepeatable_UnknownMethod_No()
    {
        Assert.False(RetrySafety.IsRepeatable(Method("/kms.v2.Future/DoSomething"), new GetKeyRequest()));
    }

    [Fact]
    public void WithRequestId_RequestWithoutTheField_ReturnedAsIs()
    {
        var request = new GetKeyRequest { Name = "k" };
        Assert.Same(request, RetrySafety.WithRequestId(request));
    }

    [Fact]
    public void MayRetry_OnlyUnavailable()
    {
        var method = Method("/kms.v1.KeyManagementService/GetKey");
        foreach (var code in Enum.GetValues<StatusCode>())
        {
            Assert.Equal(code == StatusCode.Unavailable, RetrySafety.MayRetry(method, new GetKeyRequest(), new RpcException(new Status(code, ""))));
        }
    }

    [Fact]
    public void MayRetry_OnceOnlyMethod_OnlyWhenNeverSentOrShedByTheServer()
    {
        var method = Method("/kms.v1.KeyManagementService/CreateGrant");
        Assert.False(RetrySafety.MayRetry(method, new GetKeyRequest(), ScriptedEndpoint.LostAnswer()));
        Assert.True(RetrySafety.MayRetry(method, new GetKeyRequest(), ScriptedEndpoint.ConnectionRefused()));
        Assert.True(RetrySafety.MayRetry(method, new GetKeyRequest(), ScriptedEndpoint.Shed()));

        // The trailer means something only on UNAVAILABLE.
        var shedTrailers = ScriptedEndpoint.Shed().Trailers;
        Assert.False(RetrySafety.MayRetry(method, new GetKeyRequest(), new RpcException(new Status(StatusCode.Internal, "x"), shedTrailers)));
        Assert.False(RetrySafety.ShedByServer(new RpcException(new Status(StatusCode.ResourceExhausted, "x"), shedTrailers)));
        Assert.False(RetrySafety.ShedByServer(ScriptedEndpoint.LostAnswer()));
        Assert.True(RetrySafety.ShedByServer(ScriptedEndpoint.Shed("queue_delay", null)));
    }

    // Named here, not read from the table: moving one of them to Repeatable (the table is what a
    // mutation would change) must fail a test. Creations without a request id, the cancel of a
    // tenant's deletion, and the calls that can give access back.
    public static TheoryData<string> NeverRepeatedOnceSent() =>
    [
        "/kms.v1.KeyManagementService/CreateGrant", "/kms.v1.KeyManagementService/CreateImportJob",
        "/kms.v1.AccessManagementService/CreateTenant", "/kms.v1.AccessManagementService/CreatePrincipal",
        "/kms.v1.AccessManagementService/CreateApiToken", "/kms.v1.AccessManagementService/Bootstrap",
        "/kms.v1.QuorumService/CreateQuorumRequest", "/kms.v1.AccessManagementService/CancelTenantDeletion",
        "/kms.v1.KeyManagementService/EnableKey", "/kms.v1.KeyManagementService/EnableKeyVersion",
        "/kms.v1.KeyManagementService/SetKeyPolicy", "/kms.v1.KeyManagementService/UpdateKey",
        "/kms.v1.AccessManagementService/SetRoleBinding",
        "/kms.v1.KeyManagementService/UpdatePrimaryVersion", "/kms.v1.KeyManagementService/UpdateAlias",
    ];

    [Theory]
    [MemberData(nameof(NeverRepeatedOnceSent))]
    public void MayRetry_CreationWithoutRequestIdOrCallThatGivesAccessBack_NotAfterALostAnswer_OnlyNeverSentOrShed(string fullName)
    {
        var method = Method(fullName);

        Assert.False(RetrySafety.IsRepeatable(method, new GetKeyRequest()));
        Assert.False(RetrySafety.MayRetry(method, new GetKeyRequest(), ScriptedEndpoint.LostAnswer()));
        Assert.True(RetrySafety.MayRetry(method, new GetKeyRequest(), ScriptedEndpoint.ConnectionRefused()));
        Assert.True(RetrySafety.MayRetry(method, new GetKeyRequest(), ScriptedEndpoint.Shed()));
    }

    [Fact]
    public void AsUnavailable_TlsHandshakeFailed_UnavailableAndNeverSent()
    {
        var failure = RetrySafety.AsUnavailable(ScriptedEndpoint.UntrustedCertificate(), CancellationToken.None);

        Assert.NotNull(failure);
        Assert.Equal(StatusCode.Unavailable, failure.StatusCode);
        Assert.True(RetrySafety.NeverSent(failure));
        Assert.True(RetrySafety.MayRetry(Method("/kms.v1.KeyManagementService/CreateGrant"), new GetKeyRequest(), failure));
    }

    [Theory]
    [InlineData(StatusCode.Internal)]
    [InlineData(StatusCode.Unknown)]
    public void AsUnavailable_AuthenticationExceptionAloneInTheChain_Unavailable(StatusCode code)
    {
        var tls = new RpcException(new Status(code, "x", new IOException("x", new System.Security.Authentication.AuthenticationException("handshake"))));

        Assert.Equal(StatusCode.Unavailable, RetrySafety.AsUnavailable(tls, CancellationToken.None)?.StatusCode);
    }

    [Fact]
    public void AsUnavailable_ServerSentInternal_NotUnavailable()
    {
        // A status from the server has no DebugException: nothing says the transport failed.
        Assert.Null(RetrySafety.AsUnavailable(new RpcException(new Status(StatusCode.Internal, "The remote certificate is invalid")), CancellationToken.None));
    }

    [Fact]
    public void AsUnavailable_TlsHandshakeFailedAfterTheCallerCancelled_Null()
    {
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();

        Assert.Null(RetrySafety.AsUnavailable(ScriptedEndpoint.UntrustedCertificate(), cancelled.Token));
    }

    [Theory]
    [InlineData("120", 120)]
    [InlineData("0", 0)]
    [InlineData("60000", 2000)] // capped by the most a backoff waits
    [InlineData("-1", 0)] // gRFC A6: "do not retry"; the KMS's own rule decides, with its own wait
    [InlineData(" 5", 0)]
    [InlineData("1.5", 0)]
    [InlineData("soon", 0)]
    [InlineData("99999999999", 2000)] // past an int: still a number of milliseconds, capped
    [InlineData("99999999999999999999999", 2000)] // past a long too
    [InlineData(null, 0)]
    public void Pushback_NonNegativeMillisecondsOnly_Capped(string? value, int expectedMs)
    {
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMs), RetrySafety.Pushback(ScriptedEndpoint.Shed("capacity", value), TimeSpan.FromSeconds(2)));
    }

    private static IEnumerable<MethodDescriptor> Rpcs() =>
        new[] { KeyManagementService.Descriptor, AccessManagementService.Descriptor, AuditService.Descriptor, QuorumService.Descriptor }.SelectMany(s => s.Methods);

    private static string FullName(MethodDescriptor method) => $"/{method.Service.FullName}/{method.Name}";

    private static Method<GetKeyRequest, GetKeyResponse> Method(string fullName)
    {
        var parts = fullName.Split('/', StringSplitOptions.RemoveEmptyEntries);
        var marshaller = Marshallers.Create(_ => [], _ => new GetKeyRequest());
        return new Method<GetKeyRequest, GetKeyResponse>(MethodType.Unary, parts[0], parts[1], marshaller, Marshallers.Create(_ => [], _ => new GetKeyResponse()));
    }
}
