using System.Net;
using System.Net.Sockets;
using Google.Protobuf;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>A span as an OTLP/HTTP export carried it.</summary>
public sealed record ReceivedSpan(string TraceId, string SpanId, string ParentSpanId, string Name, IReadOnlyDictionary<string, object> Attributes)
{
    public long Long(string key) => Convert.ToInt64(Attributes[key], System.Globalization.CultureInfo.InvariantCulture);
}

/// <summary>A log record as an OTLP/HTTP export carried it: its body and attributes.</summary>
public sealed record ReceivedLog(string Body, IReadOnlyDictionary<string, object> Attributes);

/// <summary>
/// An OTLP/HTTP receiver on a free loopback port (http/protobuf): keeps the spans of every trace export
/// (POST /v1/traces) and the records of every log export (POST /v1/logs), and accepts metric exports without
/// keeping them. The messages are read with protobuf's wire-format reader by their field numbers in the OTLP
/// schemas (ExportTraceServiceRequest → ResourceSpans 1 → ScopeSpans 2 → Span 2: trace_id 1, span_id 2,
/// parent_span_id 4, name 5, attributes 9; ExportLogsServiceRequest → ResourceLogs 1 → ScopeLogs 2 → LogRecord 2:
/// body 5, attributes 6).
/// </summary>
public sealed class OtlpReceiver : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly List<ReceivedSpan> _spans = [];
    private readonly List<ReceivedLog> _logs = [];
    private readonly Thread _serving;
    private int _exports;

    public int Port { get; }
    public string Endpoint => $"http://127.0.0.1:{Port}";

    public OtlpReceiver()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        Port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        _listener.Prefixes.Add($"http://127.0.0.1:{Port}/");
        _listener.Start();
        _serving = new Thread(Serve) { IsBackground = true, Name = "otlp-receiver" };
        _serving.Start();
    }

    public IReadOnlyList<ReceivedSpan> Spans
    {
        get
        {
            lock (_spans)
                return _spans.ToList();
        }
    }

    public IReadOnlyList<ReceivedLog> Logs
    {
        get
        {
            lock (_logs)
                return _logs.ToList();
        }
    }

    /// <summary>
    /// Answers exports on a thread of its own, one at a time (each takes microseconds): the test's thread pool is
    /// busy waiting on processes, and an export left waiting past the exporter's timeout would be dropped.
    /// </summary>
    private void Serve()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = _listener.GetContext();
            }
            catch (Exception ex) when (ex is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                return;
            }
            Receive(context);
        }
    }

    private void Receive(HttpListenerContext context)
    {
        try
        {
            using var body = new MemoryStream();
            context.Request.InputStream.CopyTo(body);
            if (context.Request.Url!.AbsolutePath == "/v1/traces")
            {
                var spans = ReadTraces(body.ToArray());
                lock (_spans)
                    _spans.AddRange(spans);
            }
            else if (context.Request.Url!.AbsolutePath == "/v1/logs")
            {
                var logs = ReadLogs(body.ToArray());
                lock (_logs)
                    _logs.AddRange(logs);
            }
            Interlocked.Increment(ref _exports);
            context.Response.StatusCode = 200;
            context.Response.ContentType = "application/x-protobuf";
            context.Response.Close();
        }
        catch (Exception ex) when (ex is HttpListenerException or ObjectDisposedException or IOException)
        {
            // the exporter gave up on this request or the receiver is closing
        }
    }

    /// <summary>Export requests answered so far (traces, logs and metrics).</summary>
    public int Exports => Volatile.Read(ref _exports);

    private static List<ReceivedSpan> ReadTraces(byte[] request)
    {
        var spans = new List<ReceivedSpan>();
        foreach (var resourceSpans in Fields(request, 1))
            foreach (var scopeSpans in Fields(resourceSpans, 2))
                foreach (var span in Fields(scopeSpans, 2))
                    spans.Add(ReadSpan(span));
        return spans;
    }

    private static List<ReceivedLog> ReadLogs(byte[] request)
    {
        var logs = new List<ReceivedLog>();
        foreach (var resourceLogs in Fields(request, 1))
            foreach (var scopeLogs in Fields(resourceLogs, 2))
                foreach (var record in Fields(scopeLogs, 2))
                {
                    object body = "";
                    var attributes = new Dictionary<string, object>();
                    var input = new CodedInputStream(record);
                    uint tag;
                    while ((tag = input.ReadTag()) != 0)
                    {
                        switch (WireFormat.GetTagFieldNumber(tag))
                        {
                            case 5: body = ReadAnyValue(input.ReadBytes().ToByteArray()); break;
                            case 6:
                                var (key, value) = ReadKeyValue(input.ReadBytes().ToByteArray());
                                attributes[key] = value;
                                break;
                            default: input.SkipLastField(); break;
                        }
                    }
                    logs.Add(new ReceivedLog($"{body}", attributes));
                }
        return logs;
    }

    private static ReceivedSpan ReadSpan(byte[] span)
    {
        string traceId = "", spanId = "", parent = "", name = "";
        var attributes = new Dictionary<string, object>();
        var input = new CodedInputStream(span);
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 1: traceId = Convert.ToHexStringLower(input.ReadBytes().ToByteArray()); break;
                case 2: spanId = Convert.ToHexStringLower(input.ReadBytes().ToByteArray()); break;
                case 4: parent = Convert.ToHexStringLower(input.ReadBytes().ToByteArray()); break;
                case 5: name = input.ReadString(); break;
                case 9:
                    var (key, value) = ReadKeyValue(input.ReadBytes().ToByteArray());
                    attributes[key] = value;
                    break;
                default: input.SkipLastField(); break;
            }
        }
        return new ReceivedSpan(traceId, spanId, parent, name, attributes);
    }

    /// <summary>KeyValue { key 1; AnyValue value 2 { string 1, bool 2, int64 3, double 4 } }.</summary>
    private static (string Key, object Value) ReadKeyValue(byte[] keyValue)
    {
        var key = "";
        object value = "";
        var input = new CodedInputStream(keyValue);
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            if (WireFormat.GetTagFieldNumber(tag) == 1)
                key = input.ReadString();
            else if (WireFormat.GetTagFieldNumber(tag) == 2)
                value = ReadAnyValue(input.ReadBytes().ToByteArray());
            else
                input.SkipLastField();
        }
        return (key, value);
    }

    /// <summary>AnyValue { string 1, bool 2, int64 3, double 4 } (other kinds read as "").</summary>
    private static object ReadAnyValue(byte[] anyValue)
    {
        object value = "";
        var any = new CodedInputStream(anyValue);
        uint tag;
        while ((tag = any.ReadTag()) != 0)
            value = WireFormat.GetTagFieldNumber(tag) switch
            {
                1 => any.ReadString(),
                2 => any.ReadBool(),
                3 => any.ReadInt64(),
                4 => any.ReadDouble(),
                _ => Skip(any),
            };
        return value;
    }

    private static object Skip(CodedInputStream input)
    {
        input.SkipLastField();
        return "";
    }

    /// <summary>The payloads of every length-delimited occurrence of field <paramref name="number"/> in a message.</summary>
    private static IEnumerable<byte[]> Fields(byte[] message, int number)
    {
        var input = new CodedInputStream(message);
        var found = new List<byte[]>();
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            if (WireFormat.GetTagFieldNumber(tag) == number && WireFormat.GetTagWireType(tag) == WireFormat.WireType.LengthDelimited)
                found.Add(input.ReadBytes().ToByteArray());
            else
                input.SkipLastField();
        }
        return found;
    }

    public void Dispose()
    {
        _listener.Stop();
        _listener.Close();
        _serving.Join(TimeSpan.FromSeconds(5));
    }
}
