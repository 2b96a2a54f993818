// Check, then write: hold leasehold's lease before each write, with its token.
//
//   javac -cp jackson-databind.jar:jackson-core.jar:jackson-annotations.jar CheckThenWrite.java
//   java -cp .:(the same jars) CheckThenWrite [API] [COUNT]
//
// store stands for your storage's write: it must refuse a token lower than
// the highest it has seen (see examples/postgres for a PostgreSQL one).
// Java has no CLOCK_BOOTTIME: the lease is kept as lease_remaining_ms counted
// from before the request was sent, on System.nanoTime(), and a watch event
// only makes the loop ask again.
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class CheckThenWrite {
    static final ObjectMapper JSON = new ObjectMapper();
    static final HttpClient HTTP = HttpClient.newHttpClient();
    static String api = "http://127.0.0.1:4040";

    /** The leader JSON of GET path; a 503 (not the leader) has the same body. */
    static JsonNode ask(String path, Duration timeout) throws IOException, InterruptedException {
        var request = HttpRequest.newBuilder(URI.create(api + path)).timeout(timeout).build();
        return JSON.readTree(HTTP.send(request, HttpResponse.BodyHandlers.ofString()).body());
    }

    /** The token and deadline this node holds, if it leads. */
    static final class Lease {
        private long token, deadline = System.nanoTime(); // already over
        private int events; // how many watch events were applied

        /** Applies a leader JSON asked for at `sent`; an answer asked for
         *  before the latest watch event (events != this.events) may be stale
         *  and is dropped. */
        synchronized void update(JsonNode leader, long sent, int events) {
            if (events != this.events) return;
            deadline = sent;
            if (leader.path("is_leader").asBoolean()) {
                token = leader.get("fencing_token").asLong();
                deadline = sent + leader.get("lease_remaining_ms").asLong() * 1_000_000;
            }
        }

        /** A watch event: whatever it says, ask again before the next write. */
        synchronized void changed() {
            events++;
            deadline = System.nanoTime();
        }

        /** The token while the lease lasts, else -1; and the events applied. */
        synchronized long[] tokenNow() {
            return new long[] {System.nanoTime() - deadline < 0 ? token : -1, events};
        }
    }

    /** /v1/watch: a hand-over ends the lease before its deadline. */
    static void follow(Lease lease) {
        var request = HttpRequest.newBuilder(URI.create(api + "/v1/watch")).build();
        while (true) {
            try {
                HTTP.send(request, HttpResponse.BodyHandlers.ofLines()).body()
                    .filter(line -> line.startsWith("data: "))
                    .forEach(line -> lease.changed());
            } catch (IOException | InterruptedException e) {
                // the sidecar does not answer: no lease
            }
            lease.changed();
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
            long[] now = lease.tokenNow();
            if (now[0] >= 0) {
                store(now[0], record++);
                Thread.sleep(20);
                continue;
            }
            try { // the lease ran out (renewals send no event) or is elsewhere: ask
                long sent = System.nanoTime();
                JsonNode leader = ask("/v1/leader", Duration.ofSeconds(2));
                lease.update(leader, sent, (int) now[1]);
                if (!leader.path("is_leader").asBoolean()) {
                    ask("/v1/leader?wait=10s", Duration.ofSeconds(12)); // until who leads changes
                }
            } catch (IOException e) {
                Thread.sleep(100); // the sidecar does not answer: no lease
            }
        }
    }
}
