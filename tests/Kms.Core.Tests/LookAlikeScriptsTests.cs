using Kms.Shared;

namespace Kms.Core.Tests;

/// <summary>The script table and skeletons behind the look-alike rules of principal and custodian names.</summary>
public sealed class LookAlikeScriptsTests
{
    [Theory]
    [InlineData(0x0041, "Latin")]
    [InlineData(0x007A, "Latin")]
    [InlineData(0x00E9, "Latin")]
    [InlineData(0x212A, "Latin")] // KELVIN SIGN: Latin by Scripts.txt
    [InlineData(0xFF41, "Latin")] // fullwidth a
    [InlineData(0x0370, "Greek")]
    [InlineData(0x03A9, "Greek")]
    [InlineData(0x2126, "Greek")] // OHM SIGN
    [InlineData(0x1D245, "Greek")] // the table's last Greek range ends here
    [InlineData(0x0400, "Cyrillic")]
    [InlineData(0x052F, "Cyrillic")]
    [InlineData(0x0531, "Armenian")]
    [InlineData(0xFB17, "Armenian")]
    [InlineData(0x13A0, "Cherokee")]
    [InlineData(0xABBF, "Cherokee")]
    [InlineData(0x1DF1E, "Latin")] // the table's last range
    [InlineData(0x0030, null)] // digits, punctuation, spaces: Common
    [InlineData(0x002D, null)]
    [InlineData(0x0020, null)]
    [InlineData(0x0301, null)] // a combining mark: Inherited
    [InlineData(0x0374, null)] // GREEK NUMERAL SIGN: Common, between two Greek ranges
    [InlineData(0x0485, null)] // Inherited, between two Cyrillic ranges
    [InlineData(0x03E2, null)] // Coptic, inside the Greek and Coptic block
    [InlineData(0x6771, null)] // Han: not one of the five
    [InlineData(0x10FFFF, null)]
    public void ScriptOf_ScriptsTxtRanges(int codePoint, string? script) => Assert.Equal(script, LookAlikeScripts.ScriptOf(codePoint));

    [Theory]
    [InlineData("p\u0430yments", 0x0430, "Cyrillic", "Latin")]
    [InlineData("\u0430p\u0430\u0441\u0435", 0x0070, "Latin", "Cyrillic")] // the minority, not the first letter
    [InlineData("ab\u03B1\u03B2", 0x03B1, "Greek", "Latin")] // a tie: the first letter's script is the majority
    [InlineData("\u13A0\u13A1a", 0x0061, "Latin", "Cherokee")]
    [InlineData("olg\u0430 \u03BF", 0x0430, "Cyrillic", "Latin")] // three scripts: the first letter not of the most frequent
    public void MixedScriptLetter_TwoScripts_TheFirstLetterOfTheMinority(string text, int codePoint, string script, string among) =>
        Assert.Equal((codePoint, script, among), LookAlikeScripts.MixedScriptLetter(text));

    [Theory]
    [InlineData("payments-01")]
    [InlineData("\u041E\u043B\u044C\u0433\u0430")] // Cyrillic
    [InlineData("\u0395\u03BB\u03AD\u03BD\u03B7")] // Greek
    [InlineData("\u6771\u4EAC-tokyo")] // Han and Latin: Han is not one of the five
    [InlineData("2024-01/#42")]
    [InlineData("")]
    [InlineData("\uD800a")] // a lone surrogate counts as no script
    public void MixedScriptLetter_OneScriptOrNone_Null(string text) => Assert.Null(LookAlikeScripts.MixedScriptLetter(text));

    [Theory]
    [InlineData("\u0455\u0440\u0430\u0441\u0435", "space")] // Cyrillic
    [InlineData("\u03BF\u03C1\u03B1", "opa")] // Greek
    [InlineData("\u0406\u0432\u0430\u043D", "I\u0432a\u043D")] // capitals to capitals; letters unlike any Latin one stay
    [InlineData("\u0451\u0436", "\u00EB\u0436")] // a precomposed Cyrillic "\u0451" prints as Latin "\u00EB"
    [InlineData("\u13DF\u13AA\u13A1", "CAR")] // Cherokee
    [InlineData("\u0570\u0585", "ho")] // Armenian
    [InlineData("rn-1", "rn-1")] // Latin look-alikes within the script are not judged
    public void Skeleton_LettersDrawnLikeLatinOnes_ThatLatinLetter(string text, string skeleton) => Assert.Equal(skeleton, LookAlikeScripts.Skeleton(text));
}
