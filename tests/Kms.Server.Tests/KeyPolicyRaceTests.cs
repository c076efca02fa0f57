using System.Reflection;
using System.Runtime.ExceptionServices;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Access;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// Crypto calls of a restricted key racing the change of its policy, on a real server: the call
/// reads the key (restricted) and then its policy, and a <c>SetKeyPolicy</c> commits in between.
/// A seam in the access store holds the call's policy read until the change is acknowledged.
/// </summary>
public sealed class KeyPolicyRaceTests
{
    [Fact]
    public async Task Decrypt_PolicyLiftedBetweenTheKeysReadAndItsPolicysRead_CallerAllowedBeforeAndAfter_Served()
    {
        // Before: the key's policy lets the reader decrypt. After: no policy, and the reader's role
        // (key-user) lets it decrypt. Before the fix the call was judged on the key as restricted
        // (read before) and the policy as lifted (read after: no entries), which allow nobody: the
        // reader got "decryption failed" for a blob it may open whichever state it is judged on.
        var gate = new PolicyReadGate();
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services => gate.Install(services));
        using var developer = server.CreateClient();
        using var reader = server.CreateClient(await server.CreatePrincipalWithTokenAsync("policy-reader", "dev", "key-user"));
        var key = await developer.CreateKeyAsync("tenants/dev", "lifted");
        var blob = (await developer.EncryptAsync(key.Name, "record"u8.ToArray())).Ciphertext;
        await developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
        {
            Name = key.Name,
            Entries =
            {
                new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } },
                new KeyPolicyEntry { Principal = "token:policy-reader", Operations = { "DECRYPT" } },
            },
        });

        var held = gate.HoldNext(KeyName.Parse(key.Name, "name"));
        var decrypt = reader.DecryptAsync(blob);
        await held.Entered;
        await developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = key.Name });
        held.Release();

        using var result = await decrypt;
        Assert.Equal("record"u8.ToArray(), result.Plaintext.ToArray());
    }

    [Fact]
    public async Task Encrypt_PolicyLiftedBetweenTheKeysReadAndItsPolicysRead_GranteeAllowedBeforeAndAfter_Served()
    {
        // The same race for a caller allowed before by a grant (lifting the policy revokes it) and
        // after by its role: before the fix, NOT_FOUND for a key it may use.
        var gate = new PolicyReadGate();
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services => gate.Install(services));
        using var developer = server.CreateClient();
        using var grantee = server.CreateClient(await server.CreatePrincipalWithTokenAsync("grantee", "dev", "key-user"));
        var key = await developer.CreateKeyAsync("tenants/dev", "granted");
        await developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
        {
            Name = key.Name,
            Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } } },
        });
        await developer.Raw.CreateGrantAsync(new CreateGrantRequest { Parent = key.Name, Grant = new KeyGrant { Grantee = "token:grantee", Operations = { "ENCRYPT" } } });

        var held = gate.HoldNext(KeyName.Parse(key.Name, "name"));
        var encrypt = grantee.EncryptAsync(key.Name, "record"u8.ToArray());
        await held.Entered;
        await developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = key.Name });
        held.Release();

        var encrypted = await encrypt;
        using var opened = await developer.DecryptAsync(encrypted.Ciphertext);
        Assert.Equal("record"u8.ToArray(), opened.Plaintext.ToArray());
    }

    [Fact]
    public async Task Decrypt_ReaderTakenOutOfThePolicyBetweenTheKeysReadAndItsPolicysRead_Refused()
    {
        // The fix judges a lifted policy by roles alone; a policy still in force that no longer names
        // the caller is judged as it is: refused, as for a key the caller may not use.
        var gate = new PolicyReadGate();
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services => gate.Install(services));
        using var developer = server.CreateClient();
        using var reader = server.CreateClient(await server.CreatePrincipalWithTokenAsync("policy-reader", "dev", "key-user"));
        var key = await developer.CreateKeyAsync("tenants/dev", "narrowed");
        var blob = (await developer.EncryptAsync(key.Name, "record"u8.ToArray())).Ciphertext;
        var developerOnly = new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } };
        await developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
        {
            Name = key.Name,
            Entries = { developerOnly, new KeyPolicyEntry { Principal = "token:policy-reader", Operations = { "DECRYPT" } } },
        });

        var held = gate.HoldNext(KeyName.Parse(key.Name, "name"));
        var decrypt = reader.DecryptAsync(blob);
        await held.Entered;
        await developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = key.Name, Entries = { developerOnly } });
        held.Release();

        var refused = await Assert.ThrowsAsync<RpcException>(() => decrypt);
        Assert.Equal((StatusCode.InvalidArgument, "decryption failed"), (refused.StatusCode, refused.Status.Detail));
    }

    /// <summary>Holds the next read of one key's policy until released.</summary>
    internal sealed class PolicyReadGate
    {
        private Hold? _next;

        public Hold HoldNext(KeyName key)
        {
            var hold = new Hold(key);
            Volatile.Write(ref _next, hold);
            return hold;
        }

        public void Install(IServiceCollection services)
        {
            var original = services.Last(d => d.ServiceType == typeof(IAccessStore));
            services.Add(ServiceDescriptor.Singleton(provider =>
            {
                var proxy = DispatchProxy.Create<IAccessStore, GatedAccessStore>();
                var gated = (GatedAccessStore)(object)proxy;
                gated.Inner = (IAccessStore)original.ImplementationFactory!(provider);
                gated.Gate = this;
                return proxy;
            }));
        }

        // The hold for a read of KEY's policy, taken once.
        internal Hold? Take(KeyName key) => Volatile.Read(ref _next) is { } hold && hold.Key == key && Interlocked.CompareExchange(ref _next, null, hold) == hold ? hold : null;
    }

    /// <summary>One held policy read: entered once the call asks for the policy, let through on release.</summary>
    internal sealed class Hold(KeyName key)
    {
        private readonly TaskCompletionSource _entered = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _released = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public KeyName Key { get; } = key;

        public Task Entered => _entered.Task;

        public void Release() => _released.TrySetResult();

        internal async Task<KeyPolicy> ReadAsync(Func<Task<KeyPolicy>> read)
        {
            _entered.TrySetResult();
            await _released.Task;
            return await read();
        }
    }

    /// <summary>The access store, holding a policy read when the gate says so.</summary>
    public class GatedAccessStore : DispatchProxy
    {
        internal IAccessStore Inner { get; set; } = null!;

        internal PolicyReadGate Gate { get; set; } = null!;

        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
        {
            if (targetMethod!.Name == nameof(IAccessStore.GetKeyPolicyAsync) && Gate.Take((KeyName)args![0]!) is { } hold)
            {
                return hold.ReadAsync(() => Inner.GetKeyPolicyAsync((KeyName)args[0]!, (CancellationToken)args[1]!));
            }

            try
            {
                return targetMethod.Invoke(Inner, args);
            }
            catch (TargetInvocationException e) when (e.InnerException is not null)
            {
                ExceptionDispatchInfo.Throw(e.InnerException);
                throw;
            }
        }
    }
}
