using SharpFuzz;

namespace Kms.Fuzz;

/// <summary>
/// <c>Kms.Fuzz TARGET</c>: the AFL++ harness (persistent mode) for one parser.
/// <c>Kms.Fuzz TARGET --seeds DIR</c>: writes the target's seed corpus.
/// <c>Kms.Fuzz TARGET --replay PATH...</c>: runs files (or every file of directories) once, without AFL; exit 1 if any crashes.
/// <c>Kms.Fuzz list</c>: the targets. See docs/fuzzing.md.
/// </summary>
internal static class Program
{
    private static readonly FuzzTarget[] Targets =
    [
        new BlobTarget(),
        new ContextTarget(),
        new EnvelopeTarget(),
        new EnvelopeSignedTarget(),
        new ShareTarget(),
        new ApprovalTarget(),
        new GenesisTarget(),
        new SignatureTarget(),
        new AuditTarget(),
    ];

    public static int Main(string[] args)
    {
        if (args.Length == 0 || args[0] == "list")
        {
            foreach (var t in Targets)
            {
                Console.WriteLine($"{t.Name,-10} {t.Description}");
            }

            return args.Length == 0 ? 2 : 0;
        }

        var target = Targets.FirstOrDefault(t => t.Name == args[0]);
        if (target is null)
        {
            Console.Error.WriteLine($"unknown target '{args[0]}'; targets: {string.Join(", ", Targets.Select(t => t.Name))}");
            return 2;
        }

        if (args.Length == 1)
        {
            Fuzzer.Run(stream =>
            {
                using var buffer = new MemoryStream();
                stream.CopyTo(buffer);
                target.Run(buffer.ToArray());
            });
            return 0;
        }

        return args[1] switch
        {
            "--seeds" when args.Length == 3 => WriteSeeds(target, args[2]),
            "--replay" when args.Length >= 3 => Replay(target, args[2..]),
            _ => Usage(),
        };
    }

    private static int WriteSeeds(FuzzTarget target, string directory)
    {
        Directory.CreateDirectory(directory);
        var count = 0;
        foreach (var (name, bytes) in target.Seeds())
        {
            File.WriteAllBytes(Path.Combine(directory, name), bytes);
            count++;
        }

        Console.WriteLine($"{target.Name}: {count} seeds in {directory}");
        return 0;
    }

    private static int Replay(FuzzTarget target, string[] paths)
    {
        var files = paths.SelectMany<string, string>(p => Directory.Exists(p) ? Directory.GetFiles(p).Order(StringComparer.Ordinal) : [p]).ToList();
        var crashes = 0;
        foreach (var file in files)
        {
            try
            {
                target.Run(File.ReadAllBytes(file));
            }
            catch (Exception e)
            {
                crashes++;
                Console.WriteLine($"CRASH {file}: {e}");
            }
        }

        Console.WriteLine($"{target.Name}: replayed {files.Count} inputs, {crashes} crashed");
        return crashes == 0 ? 0 : 1;
    }

    private static int Usage()
    {
        Console.Error.WriteLine("usage: Kms.Fuzz TARGET | TARGET --seeds DIR | TARGET --replay PATH... | list");
        return 2;
    }
}
