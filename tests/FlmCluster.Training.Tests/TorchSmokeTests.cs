using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

/// <summary>Fails at once if libtorch or its shim does not load (e.g. the Debian 12 GLIBCXX fix regressed).</summary>
public class TorchSmokeTests
{
    [Fact]
    public void Torch_loads_and_computes()
    {
        using var a = tensor(new float[] { 1, 2, 3, 4 }, [2, 2]);
        using var b = mm(a, a);
        Assert.Equal(new float[] { 7, 10, 15, 22 }, b.data<float>().ToArray());
    }

    [Fact]
    public void Shim_in_output_has_no_hard_requirement_on_glibcxx_3_4_32()
    {
        var shim = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.True(File.Exists(shim), shim);
        // The build marks the GLIBCXX_3.4.32 requirement weak (VER_FLG_WEAK = 2) in the copied shim.
        var bytes = File.ReadAllBytes(shim);
        var name = System.Text.Encoding.ASCII.GetBytes("GLIBCXX_3.4.32\0");
        Assert.True(bytes.AsSpan().IndexOf(name) >= 0, "the shim names GLIBCXX_3.4.32");
        Assert.True(TorchSharpVersionNeeds.IsWeak(bytes, "GLIBCXX_3.4.32"));
    }
}

/// <summary>Reads the flags of one version-needs entry of an ELF64 file (a second, independent reader).</summary>
internal static class TorchSharpVersionNeeds
{
    public static bool IsWeak(byte[] b, string version)
    {
        var shoff = (long)BitConverter.ToUInt64(b, 0x28);
        int entSize = BitConverter.ToUInt16(b, 0x3A), count = BitConverter.ToUInt16(b, 0x3C);
        for (var i = 0; i < count; i++)
        {
            var sh = (int)(shoff + i * entSize);
            if (BitConverter.ToUInt32(b, sh + 4) != 0x6ffffffe)
                continue;
            var strtab = (long)BitConverter.ToUInt64(b, (int)(shoff + BitConverter.ToUInt32(b, sh + 0x28) * entSize) + 0x18);
            long need = (long)BitConverter.ToUInt64(b, sh + 0x18);
            for (var n = 0; n < BitConverter.ToUInt32(b, sh + 0x2C); n++)
            {
                long aux = need + BitConverter.ToUInt32(b, (int)need + 8);
                for (var a = 0; a < BitConverter.ToUInt16(b, (int)need + 2); a++)
                {
                    var nameAt = (int)(strtab + BitConverter.ToUInt32(b, (int)aux + 8));
                    var end = Array.IndexOf(b, (byte)0, nameAt);
                    if (System.Text.Encoding.ASCII.GetString(b, nameAt, end - nameAt) == version)
                        return (BitConverter.ToUInt16(b, (int)aux + 4) & 2) != 0;
                    aux += BitConverter.ToUInt32(b, (int)aux + 12);
                }
                need += BitConverter.ToUInt32(b, (int)need + 12);
            }
        }
        throw new InvalidOperationException($"{version} not found");
    }
}
