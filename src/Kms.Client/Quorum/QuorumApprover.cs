using System.Security.Cryptography;
using System.Text;
using Kms.Contracts.V1;
using Kms.Core.Names;
using Kms.Core.Quorum;

namespace Kms.Client.Quorum;

/// <summary>A request rendered on this machine, ready to be shown and, once confirmed, signed.</summary>
/// <param name="Name">The request's name.</param>
/// <param name="Rendering">
/// The canonical text (docs/quorum.md): show it exactly. What gets signed is its approval statement:
/// these lines under the tag <c>kms quorum approval v2</c> and a last line <c>signed: time</c>, the time of signing.
/// </param>
/// <param name="Request">The request as fetched.</param>
public sealed record PendingApproval(string Name, string Rendering, QuorumRequestInfo Request);

/// <summary>
/// An officer's side of a quorum approval (what <c>kms officer approve</c> runs): fetch the
/// request's structured fields, render them here with the same code the server verifies
/// with (<see cref="QuorumRendering"/>), show the text, and sign that text — never a digest
/// or text the server supplies.
/// </summary>
/// <remarks>
/// <code>
/// using var approver = QuorumApprover.Load("alice.key", passphrase);
/// var pending = await approver.PrepareAsync(client, "tenants/dev/quorumRequests/…");
/// Console.Write(pending.Rendering);           // the officer reads it, then confirms
/// var result = await approver.ApproveAsync(client, pending);
/// </code>
/// The rendering is pure printable ASCII with every other character escaped, so what the
/// terminal shows is what is signed.
/// </remarks>
public sealed class QuorumApprover : IDisposable
{
    private readonly ECDsa _key;
    private readonly TimeProvider _time;

    private QuorumApprover(ECDsa key, TimeProvider? time)
    {
        _key = key;
        _time = time ?? TimeProvider.System;
        PublicKey = key.ExportSubjectPublicKeyInfo();
        Fingerprint = Officer.FingerprintOf(PublicKey);
    }

    /// <summary>This officer's public key (DER SubjectPublicKeyInfo).</summary>
    public byte[] PublicKey { get; }

    /// <summary>This officer's key fingerprint, as the KMS names it.</summary>
    public string Fingerprint { get; }

    /// <summary>Loads the officer's private key file (see <see cref="OfficerKeys.LoadPrivateKey"/>).</summary>
    /// <param name="privateKeyPath">The PEM file <see cref="OfficerKeys.Generate"/> wrote.</param>
    /// <param name="passphrase">Its passphrase; null for an unencrypted file.</param>
    /// <param name="time">The clock expiry is checked against (default: the system's).</param>
    public static QuorumApprover Load(string privateKeyPath, string? passphrase, TimeProvider? time = null) => new(OfficerKeys.LoadPrivateKey(privateKeyPath, passphrase), time);

    /// <summary>An approver over a key already in memory (the approver disposes it).</summary>
    public static QuorumApprover FromKey(ECDsa key, TimeProvider? time = null) => new(key ?? throw new ArgumentNullException(nameof(key)), time);

    /// <summary>The Kms.Core request the structured fields describe, to render.</summary>
    /// <exception cref="FormatException">A field the server sent is malformed.</exception>
    public static QuorumRequest ToQuorumRequest(QuorumRequestInfo info)
    {
        ArgumentNullException.ThrowIfNull(info);
        try
        {
            return new QuorumRequest
            {
                Id = QuorumRequestId.Parse(info.Id, "id"),
                Operation = info.Operation switch
                {
                    Kms.Contracts.V1.QuorumOperation.DestroyKeyVersionNow => Kms.Core.Quorum.QuorumOperation.DestroyKeyVersionNow,
                    Kms.Contracts.V1.QuorumOperation.ChangeOfficers => Kms.Core.Quorum.QuorumOperation.ChangeOfficers,
                    Kms.Contracts.V1.QuorumOperation.ExportBackup => Kms.Core.Quorum.QuorumOperation.ExportBackup,
                    Kms.Contracts.V1.QuorumOperation.RestoreDomain => Kms.Core.Quorum.QuorumOperation.RestoreDomain,
                    Kms.Contracts.V1.QuorumOperation.RotateDomainKey => Kms.Core.Quorum.QuorumOperation.RotateDomainKey,
                    Kms.Contracts.V1.QuorumOperation.RecoverDeploymentAdmin => Kms.Core.Quorum.QuorumOperation.RecoverDeploymentAdmin,
                    _ => throw new FormatException($"unknown quorum operation {info.Operation}"),
                },
                Parameters = info.Parameters.Select(p => KeyValuePair.Create(p.Key, p.Value)).ToList(),
                Tenant = info.Tenant.Length == 0 ? null : TenantId.Parse(info.Tenant),
                DomainKcv = info.DomainKcv,
                OfficerSetSequence = info.OfficerSetSequence,
                OfficerSetHash = info.OfficerSetHash,
                RequestedBy = info.RequestedBy,
                CreateTime = (info.CreateTime ?? throw new FormatException("create_time is missing")).ToDateTimeOffset(),
                ExpireTime = (info.ExpireTime ?? throw new FormatException("expire_time is missing")).ToDateTimeOffset(),
            };
        }
        catch (Kms.Core.Errors.KmsException e)
        {
            throw new FormatException($"the server sent a malformed quorum request: {e.Message}", e);
        }
    }

    /// <summary>The canonical text of a request's structured fields, computed here.</summary>
    /// <exception cref="FormatException">A field the server sent is malformed, or parameters out of order.</exception>
    public static string Render(QuorumRequestInfo info)
    {
        try
        {
            return QuorumRendering.Render(ToQuorumRequest(info));
        }
        catch (ArgumentException e)
        {
            throw new FormatException($"the server sent a quorum request that cannot be rendered: {e.Message}", e);
        }
    }

    /// <summary>Fetches a request and renders it here; refuses one that is not PENDING, has expired by this machine's clock, or this officer approved already.</summary>
    /// <exception cref="InvalidOperationException">The request is executed, expired, or approved by this officer already.</exception>
    public async Task<PendingApproval> PrepareAsync(KmsClient client, string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(client);
        var info = await client.GetQuorumRequestAsync(name, cancellationToken).ConfigureAwait(false);
        if (info.State != Kms.Contracts.V1.QuorumRequestState.Pending)
        {
            throw new InvalidOperationException($"quorum request {name} is {info.State}; only a pending request can be approved");
        }

        if (info.Approvals.Any(a => a.OfficerFingerprint == Fingerprint))
        {
            throw new InvalidOperationException($"quorum request {name} carries this officer's approval already ({Fingerprint}); an officer counts once");
        }

        var rendering = Render(info);
        if (info.ExpireTime.ToDateTimeOffset() <= _time.GetUtcNow())
        {
            throw new InvalidOperationException($"quorum request {name} expired at {QuorumRendering.Time(info.ExpireTime.ToDateTimeOffset())}");
        }

        return new PendingApproval(info.Name, rendering, info);
    }

    /// <summary>This officer's signature (ECDSA P-256, SHA-256, DER) over the rendering's UTF-8 bytes.</summary>
    public byte[] Sign(string rendering)
    {
        ArgumentNullException.ThrowIfNull(rendering);
        return _key.SignData(Encoding.UTF8.GetBytes(rendering), HashAlgorithmName.SHA256, DSASignatureFormat.Rfc3279DerSequence);
    }

    /// <summary>
    /// Signs the approval statement of the locally computed rendering at this machine's time —
    /// the rendering's lines under <see cref="QuorumRendering.TimedFormatTag"/> and a last line
    /// <c>signed: time</c> (<see cref="QuorumRendering.Statement"/>) — and submits it with that time.
    /// </summary>
    /// <exception cref="InvalidOperationException">The request has expired by this machine's clock: an approval signed after the expiry never counts.</exception>
    public async Task<ApproveQuorumRequestResponse> ApproveAsync(KmsClient client, PendingApproval pending, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(pending);
        var request = ToQuorumRequest(pending.Request);
        var signed = QuorumRendering.ToMilliseconds(_time.GetUtcNow());
        if (request.IsExpiredAt(signed))
        {
            throw new InvalidOperationException($"quorum request {pending.Name} expired at {QuorumRendering.Time(request.ExpireTime)}");
        }

        var statement = QuorumRendering.Statement(request, signed);
        return await client.ApproveQuorumRequestAsync(pending.Name, Fingerprint, Sign(statement), signed, cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public void Dispose() => _key.Dispose();
}
