using Kms.Client;
using Kms.Client.Envelope;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers <see cref="KmsClient"/> in a service collection.</summary>
public static class KmsClientServiceCollectionExtensions
{
    /// <summary>
    /// Registers one <see cref="KmsClient"/> for the container (a singleton: it holds the
    /// connections), configured by <paramref name="configure"/>, created on first use and
    /// disposed with the container. Failovers are logged through the container's
    /// <see cref="ILoggerFactory"/> when it has one.
    /// </summary>
    /// <exception cref="ArgumentException">On first resolution, when an option is invalid; the message says which.</exception>
    public static IServiceCollection AddKmsClient(this IServiceCollection services, Action<KmsClientOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<KmsClientOptions>().Configure(configure);
        return AddClient(services);
    }

    /// <summary>
    /// Like <see cref="AddKmsClient(IServiceCollection, Action{KmsClientOptions})"/>, with the
    /// options bound from <paramref name="configuration"/> (e.g. <c>configuration.GetSection("Kms")</c>:
    /// <c>Endpoints:0</c>, <c>CaCertificatePath</c>, <c>ApiTokenPath</c>, <c>CallTimeout</c>,
    /// <c>Retry:MaxAttempts</c>, …), then adjusted by <paramref name="configure"/> if given
    /// (certificates, interceptors).
    /// </summary>
    public static IServiceCollection AddKmsClient(this IServiceCollection services, IConfiguration configuration, Action<KmsClientOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        var options = services.AddOptions<KmsClientOptions>().Bind(configuration);
        if (configure is not null)
        {
            options.Configure(configure);
        }

        return AddClient(services);
    }

    /// <summary>
    /// Registers one <see cref="EnvelopeEncryptor"/> (a singleton: it holds the data-key cache)
    /// over the registered <see cref="KmsClient"/> — call <c>AddKmsClient</c> too. Disposed,
    /// and its cached data keys zeroed, with the container.
    /// </summary>
    /// <exception cref="ArgumentException">On first resolution, when an option is invalid; the message says which.</exception>
    public static IServiceCollection AddKmsEnvelopeEncryptor(this IServiceCollection services, Action<EnvelopeOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        if (services.Any(descriptor => descriptor.ServiceType == typeof(EnvelopeEncryptor)))
        {
            // A second registration would be ignored, and data meant for its keys encrypted
            // under the first one's: refuse it instead.
            throw new InvalidOperationException("an EnvelopeEncryptor is registered already; register one per container (create further encryptors with new EnvelopeEncryptor(client, options))");
        }

        services.AddSingleton(provider =>
        {
            var options = new EnvelopeOptions();
            configure(options);
            return new EnvelopeEncryptor(provider.GetRequiredService<KmsClient>(), options);
        });
        return services;
    }

    private static IServiceCollection AddClient(IServiceCollection services)
    {
        services.TryAddSingleton(provider => new KmsClient(
            provider.GetRequiredService<IOptions<KmsClientOptions>>().Value,
            provider.GetService<ILoggerFactory>()));
        return services;
    }
}
