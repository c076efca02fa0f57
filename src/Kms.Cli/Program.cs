using System.CommandLine;
using Kms.Cli.Commands;
using Kms.Cli.Infrastructure;

namespace Kms.Cli;

/// <summary>The <c>kms</c> executable.</summary>
internal static class Program
{
    /// <summary>
    /// Every command group of <c>kms</c>, in the order <c>kms --help</c> lists them. A group is a
    /// static method in its own file under <c>Commands/</c> that builds its commands and attaches
    /// their actions with <see cref="CommandRunner.SetAction"/>; adding a group is one line here.
    /// </summary>
    internal static readonly IReadOnlyList<Func<CommandRunner, IEnumerable<Command>>> CommandGroups =
    [
        KeysCommands.Create,
        AliasesCommands.Create,
        CryptoCommands.Create,
        SigningCommands.Create,
        RewrapCommands.Create,
        CeremonyCommands.Create,
        OfficerCommands.Create,
        BackupCommands.Create,
        AuditCommands.Create,
        ConfigCommands.Create,
        BootstrapCommand.Create,
        AccessCommands.Create,
    ];

    public static Task<int> Main(string[] args) => KmsCli.RunAsync(args, CliEnvironment.FromProcess());
}
