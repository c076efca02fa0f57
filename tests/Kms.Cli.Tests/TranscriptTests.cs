using System.Text;
using Kms.Cli.Ceremony;

namespace Kms.Cli.Tests;

/// <summary>A transcript value (a custodian's name from a share file) cannot forge a line or hide part of one.</summary>
public sealed class TranscriptTests
{
    [Theory]
    [InlineData("alice\ncustodian: mallory", "alice\\u000Acustodian: mallory")]
    [InlineData("alice\u2028share 9: forged", "alice\\u2028share 9: forged")]
    [InlineData("bob\u202Eecila", "bob\\u202Eecila")]
    [InlineData("car\u200Bol", "car\\u200Bol")]
    [InlineData("erin\rdomain key check value: 000000", "erin\\u000Ddomain key check value: 000000")]
    public void AValue_IsOneLine_WithWhatCouldForgeOrHideTextEscaped(string value, string written)
    {
        var text = Encoding.UTF8.GetString(new Transcript().Add("custodian", value).ToBytes());

        Assert.Contains("custodian: " + written + "\n", text, StringComparison.Ordinal);
        Assert.Equal(text.Split('\n').Length, Encoding.UTF8.GetString(new Transcript().Add("custodian", "x").ToBytes()).Split('\n').Length);
    }
}
