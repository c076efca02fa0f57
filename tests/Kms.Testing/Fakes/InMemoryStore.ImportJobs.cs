using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Testing.Fakes;

public sealed partial class InMemoryStore
{
    private readonly Dictionary<string, ImportJobMaterial> _importJobs = [];

    public Task CreateImportJobAsync(ImportJob job, WrappedKeyMaterial material, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            ThrowIfFailing();
            if (!_importJobs.TryAdd(job.Name.ToString(), new ImportJobMaterial(job, new WrappedKeyMaterial(material.Bytes.ToArray()))))
            {
                throw KmsErrors.AlreadyExists(job.Name.ToString());
            }
        }

        return Task.CompletedTask;
    }

    public Task<ImportJobMaterial?> GetImportJobAsync(ImportJobName name, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            ThrowIfFailing();
            return Task.FromResult(_importJobs.GetValueOrDefault(name.ToString()));
        }
    }

    public Task<IReadOnlyList<KeyVersionId>> EraseExpiredImportJobsAsync(DateTimeOffset now, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            ThrowIfFailing();
            var expired = _importJobs.Where(j => j.Value.Material is not null && j.Value.Job.IsExpired(now)).Select(j => j.Key).ToList();
            foreach (var name in expired)
            {
                _importJobs[name] = _importJobs[name] with { Material = null };
            }

            return Task.FromResult<IReadOnlyList<KeyVersionId>>([.. expired.Select(name => _importJobs[name].Job.MaterialId)]);
        }
    }
}
