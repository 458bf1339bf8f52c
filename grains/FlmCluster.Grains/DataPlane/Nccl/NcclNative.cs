using System.Runtime.InteropServices;

namespace FlmCluster.Grains.DataPlane.Nccl;

/// <summary>
/// The parts of NCCL (libnccl.so.2), the CUDA runtime and TorchSharp's native library the NCCL data plane calls.
/// Declarations only: nothing is loaded until a call is made, so CPU builds compile and never load them.
/// </summary>
internal static unsafe partial class NcclNative
{
    private const string Nccl = "libnccl.so.2";
    private const string CudaRuntime = "libcudart.so";
    private const string TorchSharpNative = "LibTorchSharp";

    public const int Success = 0;
    public const int InProgress = 7;
    public const int CudaNotReady = 600;
    public const uint CudaStreamNonBlocking = 1;

    /// <summary>ncclUniqueId: 128 opaque bytes (the address of the root that made it, and a magic number).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct UniqueId
    {
        public const int Bytes = 128;
        public fixed byte Internal[Bytes];
    }

    /// <summary>ncclDataType_t.</summary>
    public enum DataType
    {
        Int8 = 0,
        Uint8 = 1,
        Int32 = 2,
        Uint32 = 3,
        Int64 = 4,
        Uint64 = 5,
        Float16 = 6,
        Float32 = 7,
        Float64 = 8,
        Bfloat16 = 9,
    }

    /// <summary>ncclRedOp_t.</summary>
    public enum RedOp
    {
        Sum = 0,
        Prod = 1,
        Max = 2,
        Min = 3,
    }

    [LibraryImport(Nccl)]
    public static partial int ncclGetUniqueId(UniqueId* id);

    [LibraryImport(Nccl)]
    public static partial int ncclCommInitRank(nint* comm, int ranks, UniqueId id, int rank);

    [LibraryImport(Nccl)]
    public static partial int ncclCommDestroy(nint comm);

    [LibraryImport(Nccl)]
    public static partial int ncclCommAbort(nint comm);

    [LibraryImport(Nccl)]
    public static partial int ncclCommGetAsyncError(nint comm, int* error);

    [LibraryImport(Nccl)]
    public static partial nint ncclGetErrorString(int result);

    [LibraryImport(Nccl)]
    public static partial int ncclAllReduce(nint send, nint receive, nuint count, DataType type, RedOp op, nint comm, nint stream);

    [LibraryImport(Nccl)]
    public static partial int ncclReduceScatter(nint send, nint receive, nuint receiveCount, DataType type, RedOp op, nint comm, nint stream);

    [LibraryImport(Nccl)]
    public static partial int ncclAllGather(nint send, nint receive, nuint sendCount, DataType type, nint comm, nint stream);

    [LibraryImport(Nccl)]
    public static partial int ncclBroadcast(nint send, nint receive, nuint count, DataType type, int root, nint comm, nint stream);

    [LibraryImport(Nccl)]
    public static partial int ncclSend(nint send, nuint count, DataType type, int peer, nint comm, nint stream);

    [LibraryImport(Nccl)]
    public static partial int ncclRecv(nint receive, nuint count, DataType type, int peer, nint comm, nint stream);

    [LibraryImport(Nccl)]
    public static partial int ncclGroupStart();

    [LibraryImport(Nccl)]
    public static partial int ncclGroupEnd();

    [LibraryImport(CudaRuntime)]
    public static partial int cudaSetDevice(int device);

    [LibraryImport(CudaRuntime)]
    public static partial int cudaStreamCreateWithFlags(nint* stream, uint flags);

    [LibraryImport(CudaRuntime)]
    public static partial int cudaStreamDestroy(nint stream);

    [LibraryImport(CudaRuntime)]
    public static partial int cudaStreamQuery(nint stream);

    [LibraryImport(CudaRuntime)]
    public static partial int cudaStreamSynchronize(nint stream);

    /// <summary>A tensor's data pointer (device memory for a CUDA tensor).</summary>
    [LibraryImport(TorchSharpNative)]
    public static partial nint THSTensor_data(nint tensor);
}
