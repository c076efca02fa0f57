using System.Diagnostics;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Server.Security;

namespace Kms.Server.Hosting;

/// <summary>Configuration section <c>Storage:ChangeFeed</c>.</summary>
public sealed class ChangeFeedOptions
{
    /// <summary>The longest <see cref="PollInterval"/> a node starts with.</summary>
    public static readonly TimeSpan MaxPollInterval = TimeSpan.FromMinutes(5);

    /// <summary>
    /// How often the change feed is read: the bound on how long another node's revocation or destruction takes to reach this one's caches.
    /// More than 0 and at most <see cref="MaxPollInterval"/>; a start with another value is refused.
    /// </summary>
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromMilliseconds(250);
}

/// <summary>
/// Keeps this node's caches coherent with changes made through other nodes sharing the
/// database: reads the store's change feed (<see cref="IChangeFeed"/>) every
/// <see cref="ChangeFeedOptions.PollInterval"/> and forgets remembered callers after an access
/// change, and evicts erased key material from this node's HSM.
/// </summary>
/// <remarks>
/// What is cached: an authenticated caller (<see cref="CallerAuthentication"/>, for at most
/// <c>Kms:CredentialCacheTime</c>), unwrapped key copies in the HSM, and the store's hot-path
/// metadata (a key's primary version, a version by id, an alias — <see cref="IMetadataCoherence"/>):
/// every write announces itself in the feed, any change read here forgets all remembered
/// metadata, and remembered metadata is used only while a poll has succeeded within the last
/// four intervals (at least 1 s), so a key disabled on another node is refused here within one
/// poll interval — and the store is read on every call while the feed cannot be. Polling, not
/// PostgreSQL's LISTEN/NOTIFY: a notification is lost while the listening connection is down,
/// so the feed would have to be polled anyway; at 250 ms the poll alone keeps the bound.
/// While the feed cannot be read, the credential cache's own expiry is the bound.
/// </remarks>
internal sealed partial class ClusterCoherenceWorker(
    IChangeFeed feed,
    CallerAuthentication authentication,
    IHsm hsm,
    IMetadataCoherence metadata,
    ChangeFeedOptions options,
    ILogger<ClusterCoherenceWorker> logger) : BackgroundService
{
    private long _seen = -1;

    // The row at _seen as this node read it, to recognise it again (null: not read yet).
    private StoreChange? _last;

    // How long one successful poll vouches for remembered metadata: a few poll intervals, at
    // least a second. When the feed cannot be read for longer, every call reads the database.
    private TimeSpan ValidFor => options.PollInterval * 4 > TimeSpan.FromSeconds(1) ? options.PollInterval * 4 : TimeSpan.FromSeconds(1);

    /// <summary>Changes applied since the start (tests, metrics).</summary>
    public long Applied { get; private set; }

    /// <summary>Reads of the feed begun since the start (tests).</summary>
    public long Polls => Interlocked.Read(ref _polls);

    private long _polls;

    /// <summary>Reads of the feed completed since the start, each applying what it read (tests).</summary>
    public long Completed => Interlocked.Read(ref _completed);

    private long _completed;

    /// <summary>Reads and applies what changed since the last pass.</summary>
    public async Task PollOnceAsync(CancellationToken cancellationToken)
    {
        var started = Stopwatch.GetTimestamp();
        Interlocked.Increment(ref _polls);
        if (_seen < 0)
        {
            // Only later changes matter — but the node may have served calls before this read (it
            // listens while the worker starts, or this read failed and is being retried): a
            // caller it remembered then may predate a change up to the head, which is taken as
            // seen here, so remembered callers go with remembered metadata. (An unwrapped copy
            // of a version destroyed meanwhile is not used: its metadata is read again.)
            // The row at the head is read too, to recognise it at the next read: taken on trust,
            // a failover that lost it would have the changes numbered like it and before it again
            // taken as seen. Gone by the second read (the feed went back meanwhile): both again.
            while (true)
            {
                var head = await feed.GetChangeHeadAsync(cancellationToken);
                var rows = head > 0 ? await feed.ListChangesAsync(head - 1, 1, cancellationToken) : [];
                if (head == 0 || (rows.Count == 1 && rows[0].Sequence == head))
                {
                    (_seen, _last) = (head, head == 0 ? null : rows[0]);
                    break;
                }
            }

            authentication.Forget();
            metadata.InvalidateMetadata();
            Confirm(started);
            Interlocked.Increment(ref _completed);
            return;
        }

        while (true)
        {
            // The row at _seen comes back too, in the same read. The newest row is never pruned,
            // so it is there, as it was, unless the feed went back (a failover lost changes this
            // node had read): the changes made since reuse numbers it has seen — also when they
            // already reach past it — and it reads the whole feed again, forgetting everything.
            var read = await feed.ListChangesAsync(Math.Max(0, _seen - 1), 501, cancellationToken);
            IReadOnlyList<StoreChange> changes = read;
            if (_seen > 0)
            {
                if (read.Count > 0 && read[0].Sequence == _seen && (_last is null || read[0] == _last))
                {
                    changes = read.Skip(1).ToList();
                }
                else if (read.Count == 0 || read[0].Sequence == _seen)
                {
                    _seen = 0;
                    _last = null;
                    authentication.Forget();
                    metadata.InvalidateMetadata();
                    hsm.EvictAllKeys();
                    continue;
                }
            }

            // Pruned past what this node saw (it could not read the feed for longer than the
            // retention), or rows missing anywhere in the batch: what it missed is unknown, so
            // every remembered caller goes.
            var forget = false;
            var missed = false;
            var previous = _seen;

            // Before any eviction: a request that reads a destroyed version's metadata after it is
            // evicted here must find it DESTROYED, not the remembered ENABLED (the handle cache
            // does not cache the copy of such a request again either). Once is enough: what is
            // remembered from now on was read after this batch of the feed, so it includes it —
            // also when an eviction below fails.
            if (changes.Count > 0)
            {
                metadata.InvalidateMetadata();
            }

            try
            {
                foreach (var change in changes)
                {
                    missed |= change.Sequence != previous + 1;
                    forget |= missed;
                    previous = change.Sequence;
                    switch (change.Kind)
                    {
                        case StoreChangeKind.Access:
                            forget = true;
                            break;
                        case StoreChangeKind.Material when change.Subject.Length == KeyVersionId.Length * 2 && change.Subject.All(char.IsAsciiHexDigit):
                            // An eviction that fails is retried at the next poll (the change is not marked seen).
                            hsm.EvictKey(KeyVersionId.FromBytes(Convert.FromHexString(change.Subject)));
                            break;
                    }

                    _seen = change.Sequence;
                    _last = change;
                    Applied++;
                }
            }
            finally
            {
                // Whatever stopped the loop (an eviction the HSM refused): an access change it
                // already marked seen is acted on, or revoked callers would stay remembered.
                if (forget)
                {
                    authentication.Forget();
                }

                // Rows it never read may have destroyed versions: their copies go too.
                if (missed)
                {
                    hsm.EvictAllKeys();
                }

            }

            if (changes.Count < 500)
            {
                // Every change committed before this read is applied: remembered metadata may serve until the next poll is due (and a little longer, so one slow poll does not empty it).
                Confirm(started);
                Interlocked.Increment(ref _completed);
                return;
            }
        }
    }

    // Counted from when the read began, not from its answer: a slow read's snapshot is as old as
    // its start, and a change committed after it must not be vouched for a whole ValidFor later.
    private void Confirm(long started)
    {
        var left = ValidFor - Stopwatch.GetElapsedTime(started);
        if (left > TimeSpan.Zero)
        {
            metadata.ConfirmCoherent(left);
        }
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        // On the monotonic clock, as the validity a poll vouches for (Confirm) is measured: the
        // interval bounds how long a change takes to reach this node in real time. Not on the
        // injected TimeProvider — the wall clock's (a test's fake clock moved a day ran 345,600
        // polls in its Advance, once per 250 ms of it).
        using var timer = new PeriodicTimer(options.PollInterval, TimeProvider.System);
        var failing = false;
        try
        {
            do
            {
                try
                {
                    await PollOnceAsync(stoppingToken);
                    failing = false;
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    // Logged once per outage, not every 250 ms.
                    if (!failing)
                    {
                        LogPollFailed(logger, e);
                        failing = true;
                    }
                }
            }
            while (await timer.WaitForNextTickAsync(stoppingToken));
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // Shutting down.
        }
    }

    [LoggerMessage(EventId = 1205, Level = LogLevel.Warning, Message = "Reading the change feed failed; other nodes' revocations reach this node when its credential cache expires, until the feed is back")]
    private static partial void LogPollFailed(ILogger logger, Exception exception);
}
