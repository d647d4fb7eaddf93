package example.app;

import com.sun.net.httpserver.Headers;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The example app nonstop deploys: shaped like the seed's Spring Boot jar, with nothing but the JDK.
 *
 * <p>Like Spring Boot it takes {@code --key=value} arguments (unknown ones, such as
 * {@code --spring.profiles.active=prod}, are ignored), boots for a while <em>before</em> it binds its
 * port, answers {@code /actuator/health}, and on SIGTERM shuts down gracefully: it stops accepting
 * connections, lets in-flight requests finish (up to {@code --app.shutdown-seconds}), then exits 0.
 *
 * <p>Knobs that make it a useful test subject: {@code --app.health=DOWN} (never becomes healthy),
 * {@code --app.fail-rate=0.33} (a faulty canary), {@code --app.latency-ms=N} (a slow one).
 */
public final class App {

    private final Options options;
    private final byte[] versionBytes;
    /** Requests being handled right now; the graceful shutdown waits for this to reach 0. */
    private final AtomicInteger inFlight = new AtomicInteger();
    /** Counts requests to "/" so that fail-rate is an exact fraction, not a coin toss. */
    private final AtomicLong rootCount = new AtomicLong();
    private volatile boolean draining = false;
    private HttpServer server;
    private ThreadPoolExecutor executor;

    App(Options options) {
        this.options = options;
        this.versionBytes = options.version.getBytes(StandardCharsets.UTF_8);
    }

    public static void main(String[] args) throws Exception {
        long startNanos = System.nanoTime();
        // The JDK server writes the head and the body of a response separately; with Nagle's
        // algorithm on, the body then waits for the client's delayed ACK (~40 ms). Tomcat sets
        // TCP_NODELAY too.
        System.setProperty("sun.net.httpserver.nodelay", "true");
        Options options;
        try {
            options = Options.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("app: " + e.getMessage());
            System.exit(2);
            return;
        }
        App app = new App(options);
        System.out.println("Starting App " + options.version + " (pid " + ProcessHandle.current().pid() + ")");
        // The simulated boot: like Spring, the port is bound only once the context is ready, so a
        // health check (or a proxy) sees "connection refused" until then, never a half-booted app.
        Thread.sleep(Math.round(options.bootSeconds * 1000));
        try {
            app.start();
        } catch (java.net.BindException e) {
            // Spring's wording, so the log reads the same as the seed's app.
            System.err.println("Web server failed to start. Port " + options.port + " was already in use.");
            System.exit(1);
        }
        double took = (System.nanoTime() - startNanos) / 1e9;
        // like Spring's "(process running for Y)": the JVM's own uptime, its start-up included
        double running = java.lang.management.ManagementFactory.getRuntimeMXBean().getUptime() / 1e3;
        System.out.printf("Started App in %.3f seconds (port %d, version %s) (process running for %.3f)%n",
                took, app.server.getAddress().getPort(), options.version, running);
        System.out.flush();
    }

    void start() throws IOException {
        server = HttpServer.create(new InetSocketAddress(options.address, options.port), 1024);
        // Tomcat's default: up to 200 worker threads. Slow requests each hold one.
        executor = new ThreadPoolExecutor(200, 200, 30, TimeUnit.SECONDS, new LinkedBlockingQueue<>());
        executor.allowCoreThreadTimeOut(true);
        server.setExecutor(executor);
        server.createContext("/", this::handle);
        server.start();
        Runtime.getRuntime().addShutdownHook(new Thread(this::shutdown, "graceful-shutdown"));
    }

    /**
     * Graceful shutdown, run on SIGTERM/SIGINT.
     *
     * <p>{@code HttpServer.stop(delay)} closes the listening socket at once and then waits for open
     * exchanges, but on JDK 17 it waits the whole delay even when none are open (JDK-8304065), so
     * it runs on its own thread and the in-flight count decides when we are done.
     */
    private void shutdown() {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(options.shutdownSeconds);
        draining = true;
        System.out.println("Shutting down: stop accepting, " + inFlight.get() + " request(s) in flight");
        Thread stopper = new Thread(() -> server.stop(options.shutdownSeconds), "http-stop");
        stopper.setDaemon(true);
        stopper.start();
        while (inFlight.get() > 0 && System.nanoTime() < deadline) {
            sleepQuietly(5);
        }
        int left = inFlight.get();
        if (left > 0) {
            System.out.println("Shutdown timeout: " + left + " request(s) still in flight, exiting anyway");
        } else {
            System.out.println("Stopped gracefully");
        }
        System.out.flush();
        // A JVM stopped by a signal exits 143; a drained app reports success like any clean stop.
        // halt() skips the other hooks, which is fine: this is the only one.
        Runtime.getRuntime().halt(left > 0 ? 1 : 0);
    }

    private void handle(HttpExchange ex) throws IOException {
        inFlight.incrementAndGet();
        try {
            route(ex);
        } catch (IOException e) {
            // The client went away mid-response; nothing useful to answer.
        } finally {
            ex.close();
            inFlight.decrementAndGet();
        }
    }

    private void route(HttpExchange ex) throws IOException {
        String path = ex.getRequestURI().getPath();
        switch (path) {
            case "/actuator/health":
            case "/health":
                health(ex);
                return;
            default:
                break;
        }
        if (options.latencyMs > 0) {
            sleepQuietly(options.latencyMs);
        }
        switch (path) {
            case "/":
                root(ex);
                break;
            case "/version":
                send(ex, 200, "text/plain", versionBytes);
                break;
            case "/slow":
                long ms = queryLong(ex.getRequestURI(), "ms", 1000);
                sleepQuietly(ms);
                send(ex, 200, "text/plain", ("slept " + ms + " ms on " + options.version + "\n").getBytes(StandardCharsets.UTF_8));
                break;
            case "/echo":
                echo(ex);
                break;
            default:
                send(ex, 404, "text/plain", "not found\n".getBytes(StandardCharsets.UTF_8));
        }
    }

    private void root(HttpExchange ex) throws IOException {
        long n = rootCount.incrementAndGet();
        // Request n fails when floor(n*rate) steps up: exactly `rate` of requests fail, evenly spread.
        boolean fail = options.failRate > 0
                && Math.floor(n * options.failRate) != Math.floor((n - 1) * options.failRate);
        if (fail) {
            send(ex, 500, "text/plain", ("simulated failure from " + options.version + "\n").getBytes(StandardCharsets.UTF_8));
        } else {
            send(ex, 200, "text/plain", ("hello from " + options.version + "\n").getBytes(StandardCharsets.UTF_8));
        }
    }

    private void health(HttpExchange ex) throws IOException {
        // Once shutting down, report it like Spring's readiness does, so a checker on a kept-alive
        // connection stops sending traffic here.
        boolean up = !draining && options.healthUp;
        String body = up ? "{\"status\":\"UP\"}" : "{\"status\":\"DOWN\"}";
        send(ex, up ? 200 : 503, "application/json", body.getBytes(StandardCharsets.UTF_8));
    }

    /** Streams the request body back: a known length is echoed with that length, otherwise chunked. */
    private void echo(HttpExchange ex) throws IOException {
        String lengthHeader = ex.getRequestHeaders().getFirst("Content-Length");
        long length = -1;
        if (lengthHeader != null) {
            try {
                length = Long.parseLong(lengthHeader.trim());
            } catch (NumberFormatException e) {
                send(ex, 400, "text/plain", "bad Content-Length\n".getBytes(StandardCharsets.UTF_8));
                return;
            }
        }
        String type = ex.getRequestHeaders().getFirst("Content-Type");
        headers(ex, type != null ? type : "application/octet-stream");
        // HttpServer: 0 means chunked, -1 means no body; an empty known-length body is -1.
        ex.sendResponseHeaders(200, length < 0 ? 0 : (length == 0 ? -1 : length));
        if (length == 0 || isHead(ex)) {
            return;
        }
        byte[] buf = new byte[64 * 1024];
        try (InputStream in = ex.getRequestBody(); OutputStream out = ex.getResponseBody()) {
            int r;
            while ((r = in.read(buf)) > 0) {
                out.write(buf, 0, r);
            }
        }
    }

    private void send(HttpExchange ex, int status, String contentType, byte[] body) throws IOException {
        // Drain what the client sent so the connection can be reused.
        try (InputStream in = ex.getRequestBody()) {
            in.transferTo(OutputStream.nullOutputStream());
        }
        headers(ex, contentType);
        if (isHead(ex)) {
            ex.getResponseHeaders().set("Content-Length", Integer.toString(body.length));
            ex.sendResponseHeaders(status, -1);
            return;
        }
        ex.sendResponseHeaders(status, body.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(body);
        }
    }

    private void headers(HttpExchange ex, String contentType) {
        Headers h = ex.getResponseHeaders();
        h.set("Content-Type", contentType);
        h.set("X-App-Version", options.version);
        if (draining) {
            // Finish this request, but tell the client (or proxy) not to reuse the connection.
            h.set("Connection", "close");
        }
    }

    private static boolean isHead(HttpExchange ex) {
        return "HEAD".equals(ex.getRequestMethod());
    }

    private static long queryLong(URI uri, String name, long dflt) {
        String q = uri.getRawQuery();
        if (q == null) {
            return dflt;
        }
        for (String part : q.split("&")) {
            int eq = part.indexOf('=');
            if (eq > 0 && part.substring(0, eq).equals(name)) {
                try {
                    return Math.max(0, Long.parseLong(part.substring(eq + 1)));
                } catch (NumberFormatException e) {
                    return dflt;
                }
            }
        }
        return dflt;
    }

    private static void sleepQuietly(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** The command line, Spring style: {@code --server.port=8081 --app.version=v2}. */
    static final class Options {
        int port = -1;
        String address = "127.0.0.1";
        String version;
        double bootSeconds = 1.5;
        boolean healthUp = true;
        double failRate = 0;
        long latencyMs = 0;
        int shutdownSeconds = 30;

        static Options parse(String[] args) {
            // Like Spring Boot: application.properties inside the jar gives defaults,
            // command-line --key=value arguments override them.
            Map<String, String> kv = new HashMap<>(bakedProperties());
            for (String arg : args) {
                if (!arg.startsWith("--") || !arg.contains("=")) {
                    throw new IllegalArgumentException("expected --key=value, got " + arg);
                }
                int eq = arg.indexOf('=');
                kv.put(arg.substring(2, eq), arg.substring(eq + 1));
            }
            Options o = new Options();
            try {
                if (!kv.containsKey("server.port")) {
                    throw new IllegalArgumentException("--server.port=N is required");
                }
                o.port = Integer.parseInt(kv.get("server.port"));
                o.address = kv.getOrDefault("server.address", o.address);
                o.version = kv.get("app.version");
                if (o.version == null || o.version.isEmpty()) {
                    o.version = System.getenv("APP_VERSION");
                }
                if (o.version == null || o.version.isEmpty()) {
                    o.version = bakedVersion();
                }
                o.bootSeconds = Double.parseDouble(kv.getOrDefault("app.boot-seconds", "1.5"));
                String health = kv.getOrDefault("app.health", "UP").toUpperCase();
                if (!health.equals("UP") && !health.equals("DOWN")) {
                    throw new IllegalArgumentException("--app.health must be UP or DOWN");
                }
                o.healthUp = health.equals("UP");
                o.failRate = Double.parseDouble(kv.getOrDefault("app.fail-rate", "0"));
                if (o.failRate < 0 || o.failRate > 1) {
                    throw new IllegalArgumentException("--app.fail-rate must be within 0..1");
                }
                o.latencyMs = Long.parseLong(kv.getOrDefault("app.latency-ms", "0"));
                o.shutdownSeconds = Integer.parseInt(kv.getOrDefault("app.shutdown-seconds", "30"));
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("bad number: " + e.getMessage());
            }
            return o;
        }

        /** {@code application.properties} baked into the jar by {@code build.sh VERSION key=value...}. */
        private static Map<String, String> bakedProperties() {
            Map<String, String> out = new HashMap<>();
            try (InputStream in = App.class.getResourceAsStream("/application.properties")) {
                if (in != null) {
                    java.util.Properties p = new java.util.Properties();
                    p.load(in);
                    for (String k : p.stringPropertyNames()) {
                        out.put(k, p.getProperty(k));
                    }
                }
            } catch (IOException e) {
                // no baked defaults
            }
            return out;
        }

        /** A version baked into the jar by {@code build.sh VERSION}, else "dev". */
        private static String bakedVersion() {
            try (InputStream in = App.class.getResourceAsStream("/version.txt")) {
                if (in != null) {
                    String v = new String(in.readAllBytes(), StandardCharsets.UTF_8).trim();
                    if (!v.isEmpty()) {
                        return v;
                    }
                }
            } catch (IOException e) {
                // fall through
            }
            return "dev";
        }
    }
}
