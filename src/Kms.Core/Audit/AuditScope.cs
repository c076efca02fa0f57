namespace Kms.Core.Audit;

/// <summary>
/// The audit event of the request being served, carried through the async call chain so
/// that the store can commit a mutation and its event in one transaction: the first write
/// the request makes also appends <see cref="Entry"/> (outcome OK) to the chain, and marks
/// it <see cref="Written"/>. Requests that write nothing (reads, crypto, refusals) are
/// appended afterwards by the group-committing <see cref="Services.AuditLog"/>.
/// </summary>
public sealed class AuditScope
{
    private static readonly AsyncLocal<AuditScope?> Ambient = new();
    private readonly Lock _lock = new();
    private AuditEntry _entry;

    // The key versions the call used besides its resource (AddKeyVersion): the first
    // AuditEntry.MaxListedKeyVersions listed, every distinct one counted; null until the first.
    private List<string>? _keyVersions;
    private HashSet<string>? _keyVersionsSeen;

    /// <summary>A scope for a request whose event is <paramref name="entry"/> so far.</summary>
    public AuditScope(AuditEntry entry, bool mutating)
    {
        _entry = entry;
        Mutating = mutating;
    }

    /// <summary>The scope of the request on this async flow, if any.</summary>
    public static AuditScope? Current => Ambient.Value;

    /// <summary>Whether the request changes state (its first store write carries the event).</summary>
    public bool Mutating { get; }

    /// <summary>Whether the event was committed with the request's first write.</summary>
    public bool Written { get; private set; }

    /// <summary>
    /// Whether the store gave up waiting on this request's behalf — for the write lock (another
    /// session held it past the store's command or busy timeout) or for the database to answer:
    /// the request has had its one timeout, and its answer is UNAVAILABLE. Its failure's audit
    /// event, which would wait as long again for the same lock, is then queued but not waited for.
    /// </summary>
    public bool StoreTimedOut { get; private set; }

    /// <summary>The event as known so far.</summary>
    public AuditEntry Entry
    {
        get
        {
            lock (_lock)
            {
                return WithKeyVersions(_entry);
            }
        }
    }

    /// <summary>Makes <paramref name="scope"/> the current scope until the returned value is disposed.</summary>
    public static IDisposable Enter(AuditScope scope)
    {
        var previous = Ambient.Value;
        Ambient.Value = scope;
        return new Restore(previous);
    }

    /// <summary>
    /// Enters a scope for the lifecycle's own work (principal <c>system:lifecycle</c>): its first
    /// write that changes something commits <paramref name="operation"/>'s event with it.
    /// </summary>
    public static IDisposable EnterSystem(string operation, string? resource, TimeProvider time) => Enter(new AuditScope(
        new AuditEntry
        {
            Time = Services.Clock.Now(time),
            RequestId = CallIds.New(),
            Principal = "system:lifecycle",
            Operation = operation,
            Resource = resource,
            Outcome = "OK",
        },
        mutating: true));

    /// <summary>Records who is calling, once authenticated (before any write can carry the event).</summary>
    public static void SetCaller(string principal, string? tenant)
    {
        if (Current is { } scope)
        {
            lock (scope._lock)
            {
                scope._entry = scope._entry with { Principal = principal, Tenant = tenant };
            }
        }
    }

    /// <summary>Names the resource once the handler knows it (Decrypt learns its key version from the blob).</summary>
    public static void SetResource(string resource)
    {
        if (Current is { } scope)
        {
            lock (scope._lock)
            {
                // Often a request's own name, not yet validated: recorded as any request's string is.
                scope._entry = scope._entry with { Resource = AuditText.FromRequest(resource) };
            }
        }
    }

    /// <summary>
    /// Adds a key version the call used besides its resource (ReEncrypt's source, a batch item's
    /// key), allowed or refused: listed once, in the order first added, up to
    /// <see cref="AuditEntry.MaxListedKeyVersions"/>; the distinct ones beyond are counted
    /// (<see cref="AuditEntry.OtherKeyVersions"/>).
    /// </summary>
    public static void AddKeyVersion(string version)
    {
        if (Current is { } scope)
        {
            lock (scope._lock)
            {
                scope._keyVersionsSeen ??= new HashSet<string>(StringComparer.Ordinal);
                scope._keyVersions ??= [];
                if (scope._keyVersionsSeen.Add(version) && scope._keyVersions.Count < AuditEntry.MaxListedKeyVersions)
                {
                    scope._keyVersions.Add(AuditText.FromRequest(version)!);
                }
            }
        }
    }

    /// <summary>
    /// For the store, inside a write transaction: the entry to append with this write (the
    /// request's first, if it changes anything), or null. Call <see cref="Committed"/> once the transaction commits.
    /// </summary>
    public AuditEntry? TakeForWrite()
    {
        lock (_lock)
        {
            return Mutating && !Written ? WithKeyVersions(_entry) with { Outcome = "OK" } : null;
        }
    }

    /// <summary>The transaction that carried the entry committed.</summary>
    public void Committed()
    {
        lock (_lock)
        {
            Written = true;
        }
    }

    /// <summary>For the store: a statement of this request's gave up waiting (<see cref="StoreTimedOut"/>).</summary>
    public void TimedOut()
    {
        lock (_lock)
        {
            StoreTimedOut = true;
        }
    }

    // Under _lock.
    private AuditEntry WithKeyVersions(AuditEntry entry) => _keyVersions is null
        ? entry
        : entry with { KeyVersions = [.. _keyVersions], OtherKeyVersions = _keyVersionsSeen!.Count - _keyVersions.Count };

    private sealed class Restore(AuditScope? previous) : IDisposable
    {
        public void Dispose() => Ambient.Value = previous;
    }
}
