using System;
using System.Collections.Generic;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

// Sets VER_FLG_WEAK on selected entries of an ELF64 file's SHT_GNU_verneed section, so a missing
// symbol version is not fatal to the dynamic loader. See TorchSharpNativeFix.targets for why.
public sealed class FlmWeakenElfVersionNeeds : Task
{
    private const uint ShtGnuVerneed = 0x6ffffffe;
    private const ushort VerFlgWeak = 0x2;

    [Required] public ITaskItem[] Files { get; set; } = Array.Empty<ITaskItem>();
    [Required] public string Versions { get; set; } = "";

    public override bool Execute()
    {
        var wanted = new HashSet<string>(Versions.Split(new[] { ';', ',' }, StringSplitOptions.RemoveEmptyEntries));
        foreach (var item in Files)
        {
            var path = item.ItemSpec;
            try
            {
                var bytes = File.ReadAllBytes(path);
                var changed = Weaken(bytes, wanted, out var names);
                if (changed)
                {
                    // Write a new file and move it over the old one: never edit a hard link to the NuGet cache.
                    var tmp = path + ".flmtmp";
                    File.WriteAllBytes(tmp, bytes);
                    File.Delete(path);
                    File.Move(tmp, path);
                    Log.LogMessage(MessageImportance.Normal, $"Marked {string.Join(", ", names)} weak in {path}");
                }
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException or ArgumentOutOfRangeException)
            {
                Log.LogError($"Could not patch {path}: {ex.Message}");
            }
        }
        return !Log.HasLoggedErrors;
    }

    private static bool Weaken(byte[] b, HashSet<string> wanted, out List<string> names)
    {
        names = new List<string>();
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F')
            throw new InvalidDataException("not an ELF file");
        if (b[4] != 2 || b[5] != 1)
            throw new InvalidDataException("only little-endian ELF64 is supported");
        var shoff = (long)U64(b, 0x28);
        int shentsize = U16(b, 0x3A);
        int shnum = U16(b, 0x3C);
        var changed = false;
        for (var i = 0; i < shnum; i++)
        {
            var sh = (int)(shoff + (long)i * shentsize);
            if (U32(b, sh + 4) != ShtGnuVerneed)
                continue;
            var offset = (long)U64(b, sh + 0x18);
            var link = (int)U32(b, sh + 0x28);
            var count = (int)U32(b, sh + 0x2C);
            var strSh = (int)(shoff + (long)link * shentsize);
            var strOff = (long)U64(b, strSh + 0x18);

            var need = offset;
            for (var n = 0; n < count; n++)
            {
                // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32
                int auxCount = U16(b, (int)need + 2);
                var aux = need + U32(b, (int)need + 8);
                for (var a = 0; a < auxCount; a++)
                {
                    // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32
                    var nameOff = strOff + U32(b, (int)aux + 8);
                    var end = (int)nameOff;
                    while (b[end] != 0) end++;
                    var name = Encoding.ASCII.GetString(b, (int)nameOff, end - (int)nameOff);
                    var flags = U16(b, (int)aux + 4);
                    if (wanted.Contains(name) && (flags & VerFlgWeak) == 0)
                    {
                        var weak = flags | VerFlgWeak;
                        b[(int)aux + 4] = (byte)(weak & 0xFF);
                        b[(int)aux + 5] = (byte)(weak >> 8);
                        names.Add(name);
                        changed = true;
                    }
                    var next = U32(b, (int)aux + 12);
                    if (next == 0) break;
                    aux += next;
                }
                var nextNeed = U32(b, (int)need + 12);
                if (nextNeed == 0) break;
                need += nextNeed;
            }
        }
        return changed;
    }

    // Little-endian readers (the task compiles against netstandard, without BinaryPrimitives).
    private static ushort U16(byte[] b, int at) => (ushort)(b[at] | b[at + 1] << 8);
    private static uint U32(byte[] b, int at) => (uint)(b[at] | b[at + 1] << 8 | b[at + 2] << 16 | b[at + 3] << 24);
    private static ulong U64(byte[] b, int at) => U32(b, at) | (ulong)U32(b, at + 4) << 32;
}
