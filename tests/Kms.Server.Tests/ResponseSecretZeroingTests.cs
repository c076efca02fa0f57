using System.Collections.Concurrent;
using Google.Protobuf;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// The server's copy of a data key or decrypted plaintext is zeroed once the response has been
/// written (claim 12): the response references the secret's buffer, and that buffer is what is checked.
/// </summary>
public sealed class ResponseSecretZeroingTests
{
    [Fact]
    public async Task GenerateDataKeyAndDecrypt_ResponseBuffersZeroedAfterTheResponseIsSent()
    {
        var sent = new ConcurrentQueue<IMessage>();
        await using var server = await KmsTestServer.StartAsync(null, null, "dev",
            services => services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<ResponseAfterTheRequestEnded>(sent)));
        using var client = server.CreateClient();
        var key = await client.CreateKeyAsync("tenants/dev", "zeroed");
        var plaintext = "PLAINTEXT-MARKER-4c1e"u8.ToArray();
        var encrypted = await client.EncryptAsync(key.Name, plaintext);

        using var dataKey = await client.GenerateDataKeyAsync(key.Name);
        using var decrypted = await client.DecryptAsync(encrypted.Ciphertext);
        Assert.Equal(plaintext, decrypted.Plaintext.ToArray());
        Assert.Contains(dataKey.Plaintext.ToArray(), b => b != 0);

        // Each response is handed over once its request has ended (after the server's own
        // end-of-request work): its secret field must be zeros by then, not the secret.
        var generated = await NextAsync<GenerateDataKeyResponse>(sent);
        var opened = await NextAsync<DecryptResponse>(sent);
        Assert.Equal(32, generated.Plaintext.Length);
        Assert.All(generated.Plaintext.ToByteArray(), b => Assert.Equal(0, b));
        Assert.Equal(plaintext.Length, opened.Plaintext.Length);
        Assert.All(opened.Plaintext.ToByteArray(), b => Assert.Equal(0, b));
    }

    private static async Task<T> NextAsync<T>(ConcurrentQueue<IMessage> sent)
        where T : IMessage
    {
        // The callback runs on the server's time after the client has its answer: 30 s is a hang
        // guard (500 rounds of 10 ms, about 5 s, could end first on a loaded machine).
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (DateTime.UtcNow < deadline)
        {
            if (sent.FirstOrDefault(m => m is T) is T found)
            {
                return found;
            }

            await Task.Delay(10);
        }

        throw new TimeoutException($"no {typeof(T).Name} was handed over within 30 s of its request's end");
    }

    // Registers its end-of-request callback before the handler runs: callbacks run last-registered
    // first, so this one runs after the handler's (the zeroing of the secrets it registered).
    private sealed class ResponseAfterTheRequestEnded(ConcurrentQueue<IMessage> sent) : Interceptor
    {
        public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            TResponse? response = null;
            context.GetHttpContext().Response.OnCompleted(() =>
            {
                if (response is IMessage message)
                {
                    sent.Enqueue(message);
                }

                return Task.CompletedTask;
            });
            response = await continuation(request, context);
            return response;
        }
    }
}
