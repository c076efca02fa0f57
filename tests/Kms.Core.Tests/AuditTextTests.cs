using Kms.Core.Audit;

namespace Kms.Core.Tests;

/// <summary>A request's strings as audit events record them: bounded, printable, valid Unicode.</summary>
public sealed class AuditTextTests
{
    [Theory]
    [InlineData("tenants/dev/keys/orders", "tenants/dev/keys/orders")]
    [InlineData("tenants/dev/keys/caf\u00e9-\U0001F600", "tenants/dev/keys/caf\u00e9-\U0001F600")]
    [InlineData("tenants/dev/keys/a\0b", "tenants/dev/keys/a?b")]
    [InlineData("a\r\nforged line", "a??forged line")]
    [InlineData("", "")]
    public void FromRequest_ReplacesWhatADatabaseOrALogLineCannotTake(string text, string recorded)
    {
        Assert.Equal(recorded, AuditText.FromRequest(text));
    }

    [Fact]
    public void FromRequest_LoneSurrogates_Replaced()
    {
        // Built here: an attribute's string cannot hold a lone surrogate.
        Assert.Equal("lone \uFFFD high", AuditText.FromRequest("lone " + (char)0xD800 + " high"));
        Assert.Equal("lone \uFFFD low", AuditText.FromRequest("lone " + (char)0xDC00 + " low"));
        Assert.Equal("ends high \uFFFD", AuditText.FromRequest("ends high " + (char)0xD83D));
        Assert.Equal("\uFFFD\uFFFD", AuditText.FromRequest(string.Concat((char)0xDC00, (char)0xD800)));
    }

    [Fact]
    public void FromRequest_LongText_CutWithoutSplittingASurrogatePair()
    {
        Assert.Null(AuditText.FromRequest(null));
        Assert.Equal(new string('a', 512) + AuditText.TruncatedMark, AuditText.FromRequest(new string('a', 600)));

        // The pair straddles the cut: it goes whole, and no lone half is left.
        var straddling = new string('a', 511) + "\U0001F600" + "tail";
        Assert.Equal(new string('a', 511) + AuditText.TruncatedMark, AuditText.FromRequest(straddling));

        var before = new string('a', 510) + "\U0001F600" + "tail";
        Assert.Equal(before[..512] + AuditText.TruncatedMark, AuditText.FromRequest(before));
        Assert.Equal(new string('a', 512), AuditText.FromRequest(new string('a', 512)));
    }

    [Fact]
    public void SetResource_ARequestsNameSetByAHandler_RecordedAsTheInterceptorRecordsIt()
    {
        // Quorum handlers name the request they were given before parsing it.
        var scope = new AuditScope(new AuditEntry { Time = DateTimeOffset.UnixEpoch, RequestId = "r", Principal = "anonymous", Operation = "op", Outcome = "UNKNOWN" }, mutating: false);
        using (AuditScope.Enter(scope))
        {
            AuditScope.SetResource("quorumRequests/a\0b" + new string('x', 600));
        }

        Assert.Equal("quorumRequests/a?b" + new string('x', 512 - 18) + AuditText.TruncatedMark, scope.Entry.Resource);
    }
}
