// Check, then write: hold leasehold's lease before each write, with its token.
//
//   javac -cp jackson-databind.jar:jackson-core.jar:jackson-annotations.jar CheckThenWrite.java
//   java -cp .:(the same jars) CheckThenWrite [API] [COUNT]
//
// store stands for your storage's write: it must refuse a token lower than
// the highest it has seen (see examples/postgres for a PostgreSQL one).
// Java has no CLOCK_BOOTTIME: the lease is kept as lease_remaining_ms counted
// from before the request was sent, on System.nanoTime(). That clock stops
// while the host is suspended: on a host that can suspend, ask again after
// a resume.
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class CheckThenWrite {
    static final ObjectMapper JSON = new ObjectMapper();
    static final HttpClient HTTP = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
    static String api = "http://127.0.0.1:4040";

    /** The leader JSON of /v1/leader; a 503 (not the leader) has the same body. */
    static JsonNode ask() throws IOException, InterruptedException {
        var request = HttpRequest.newBuilder(URI.create(api + "/v1/leader")).timeout(Duration.ofSeconds(2)).build();
        return JSON.readTree(HTTP.send(request, HttpResponse.BodyHandlers.ofString()).body());
    }

    /** The lease as the loop sees it: the token, if it holds, and the events so far. */
    record Held(boolean held, long token, int events) {}

    /** The token and deadline this node holds, if it leads. */
    static final class Lease {
        private long token;
        private long deadline = System.nanoTime(); // already over
        private int events; // how many watch events came

        /** Keeps an answer of /v1/leader asked for at `sent`, unless a watch
         *  event came since (events != this.events): then it may be stale. */
        synchronized void grant(JsonNode leader, long sent, int events) {
            if (events == this.events && leader.path("is_leader").asBoolean()) {
                token = leader.get("fencing_token").asLong();
                deadline = sent + leader.get("lease_remaining_ms").asLong() * 1_000_000;
            }
        }

        /** A watch event: whatever it says, ask again before the next write. */
        synchronized void revoke() {
            events++;
            deadline = System.nanoTime();
            notifyAll();
        }

        synchronized Held now() {
            return new Held(System.nanoTime() - deadline < 0, token, events);
        }

        /** Waits until an event after the first `events` comes, at most 1 s. */
        synchronized void waitForEvent(int events) throws InterruptedException {
            if (this.events == events) wait(1000);
        }
    }

    /** /v1/watch: a hand-over ends the lease before its deadline. */
    static void follow(Lease lease) {
        var request = HttpRequest.newBuilder(URI.create(api + "/v1/watch")).build();
        while (true) {
            try {
                HTTP.send(request, HttpResponse.BodyHandlers.ofLines()).body()
                    .filter(line -> line.startsWith("data: "))
                    .forEach(line -> lease.revoke());
            } catch (IOException | UncheckedIOException e) {
                // the stream broke or the sidecar does not answer
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return;
            }
            lease.revoke();
            try { Thread.sleep(1000); } catch (InterruptedException e) { return; }
        }
    }

    static void store(long token, int record) {
        System.out.println(token + " " + record);
    }

    public static void main(String[] args) throws InterruptedException {
        if (args.length > 0) api = args[0];
        int count = args.length > 1 ? Integer.parseInt(args[1]) : 100;
        var lease = new Lease();
        var follower = new Thread(() -> follow(lease));
        follower.setDaemon(true);
        follower.start();
        for (int record = 0; record < count; ) {
            Held now = lease.now();
            if (now.held()) {
                store(now.token(), record++);
                Thread.sleep(20);
                continue;
            }
            try { // the lease ran out (renewals send no event) or is elsewhere: ask
                long sent = System.nanoTime();
                JsonNode leader = ask();
                lease.grant(leader, sent, now.events());
                if (!leader.path("is_leader").asBoolean()) {
                    lease.waitForEvent(now.events()); // until who leads changes, or 1 s
                }
            } catch (IOException e) {
                Thread.sleep(100); // the sidecar does not answer: no lease
            }
        }
    }
}
