using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Google.Protobuf.Reflection;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// Where a command's words go. Results go to standard output — a table or short text, or with
/// <c>--output json</c> exactly one JSON document — and everything else (notes, warnings,
/// progress, errors) to standard error, so <c>kms … -o json | jq</c> always parses.
/// </summary>
internal sealed class CliOutput
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private static readonly JsonFormatter ProtoFormatter = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(true));

    private readonly CliEnvironment _environment;
    private readonly Lazy<IAnsiConsole> _out;
    private readonly Lazy<IAnsiConsole> _error;
    private bool _resultWritten;

    public CliOutput(CliEnvironment environment, OutputFormat format)
    {
        _environment = environment;
        Format = format;
        _out = new(() => CreateConsole(environment.Out, environment.OutputIsTerminal));
        _error = new(() => CreateConsole(environment.Error, environment.ErrorIsTerminal));
    }

    public OutputFormat Format { get; }

    public bool IsJson => Format == OutputFormat.Json;

    /// <summary>Standard error as a Spectre console: progress bars and prompts.</summary>
    public IAnsiConsole ErrorConsole => _error.Value;

    /// <summary>
    /// Writes the command's result: <paramref name="json"/> with <c>--output json</c>, else what
    /// <paramref name="human"/> renders. A command writes one result.
    /// </summary>
    public void Result(JsonNode json, Func<IRenderable> human)
    {
        ArgumentNullException.ThrowIfNull(human);
        if (_resultWritten)
        {
            throw new InvalidOperationException("a command writes one result");
        }

        _resultWritten = true;
        if (IsJson)
        {
            _environment.Out.WriteLine(json.ToJsonString(Indented));
            _environment.Out.Flush();
        }
        else
        {
            _out.Value.Write(human());
        }
    }

    /// <summary>A result whose human form is one line of text (escaped as <see cref="TerminalText"/>: it may carry names from outside).</summary>
    public void Result(JsonNode json, string human) => Result(json, () => new Text(TerminalText.Of(human) + Environment.NewLine));

    /// <summary>A note on standard error (in both formats): what was done, where a file went.</summary>
    public void Note(string message)
    {
        _environment.Error.WriteLine(TerminalText.Of(message));
        _environment.Error.Flush();
    }

    /// <summary>A warning on standard error.</summary>
    public void Warn(string message) => Note("kms: warning: " + message);

    /// <summary>A protobuf message in its canonical JSON form (proto field names in lowerCamelCase, enums by name, every field present).</summary>
    public static JsonNode Proto(IMessage message) => JsonNode.Parse(ProtoFormatter.Format(message))!;

    /// <summary>
    /// A protobuf enum value as tables show it: its proto name without the enum's prefix
    /// (<c>ENCRYPT_DECRYPT</c>, <c>AES_256_GCM</c>, <c>EXECUTED</c>), as the JSON output names it
    /// with the prefix; a number this client does not know is shown as the number.
    /// </summary>
    public static string EnumName<T>(T value)
        where T : struct, Enum
    {
        var original = ProtoEnumName(value);
        if (original.Length == 0 || !char.IsLetter(original[0]))
        {
            return original;
        }

        var prefix = new StringBuilder();
        foreach (var c in typeof(T).Name)
        {
            if (char.IsUpper(c) && prefix.Length > 0)
            {
                prefix.Append('_');
            }

            prefix.Append(char.ToUpperInvariant(c));
        }

        prefix.Append('_');
        return original.StartsWith(prefix.ToString(), StringComparison.Ordinal) ? original[prefix.Length..] : original;
    }

    /// <summary>A protobuf enum value by its proto name (<c>QUORUM_REQUEST_STATE_EXECUTED</c>), as <see cref="Proto"/> writes it; a number this client does not know as the number.</summary>
    public static string ProtoEnumName<T>(T value)
        where T : struct, Enum =>
        typeof(T).GetField(value.ToString())?.GetCustomAttribute<OriginalNameAttribute>()?.Name
        ?? Convert.ToInt64(value, CultureInfo.InvariantCulture).ToString(CultureInfo.InvariantCulture);

    /// <summary>A table with these column headings, ready for rows.</summary>
    public static Table Table(params string[] columns)
    {
        var table = new Table().Border(TableBorder.Rounded);
        foreach (var column in columns)
        {
            table.AddColumn(new TableColumn(Markup.Escape(column)));
        }

        return table;
    }

    /// <summary>
    /// Adds a row of plain text cells, escaped twice: never read as markup, and written as
    /// <see cref="TerminalText"/> (a server's string or a share file's name can hold an escape
    /// sequence or U+202E, which would show another name).
    /// </summary>
    public static void AddRow(Table table, params string?[] cells) =>
        table.AddRow([.. cells.Select(cell => (IRenderable)new Text(TerminalText.Of(cell ?? "")))]);

    /// <summary>A two-column table of names and values.</summary>
    public static Table Properties(IEnumerable<(string Name, string? Value)> rows)
    {
        var table = new Table().Border(TableBorder.Rounded).HideHeaders();
        table.AddColumn("property");
        table.AddColumn("value");
        foreach (var (name, value) in rows)
        {
            AddRow(table, name, value);
        }

        return table;
    }

    private static IAnsiConsole CreateConsole(TextWriter writer, bool terminal)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
        });

        // Redirected output keeps whole rows on one line for grep; a terminal wraps to its width.
        if (!terminal)
        {
            console.Profile.Width = 240;
        }

        return console;
    }
}
