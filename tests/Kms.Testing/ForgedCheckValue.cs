namespace Kms.Testing;

/// <summary>
/// Two AES-256 keys with the same 3-byte check value (the first three bytes of AES_k(0^128)):
/// what someone who wants to pass a forged domain key off as the real one needs. Found by
/// brute force over the forged key's last bytes: about 2^24 AES operations, a second on one core.
/// </summary>
public static class ForgedCheckValue
{
    /// <summary>The real domain key.</summary>
    public static byte[] Real => Convert.FromHexString("A0A1A2A3A4A5A6A7A8A9AAABACADAEAFB0B1B2B3B4B5B6B7B8B9BABBBCBDBEBF");

    /// <summary>Another key, whose check value is the real one's (5F0FA7).</summary>
    public static byte[] Forged => Convert.FromHexString("B0B1B2B3B4B5B6B7B8B9BABBBCBDBEBFC0C1C2C3C4C5C6C73A126A0000000000");
}
