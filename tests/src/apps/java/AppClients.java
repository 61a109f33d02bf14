// JVM clients for tests/tests/apps.rs, built on Debian's Apache HttpClient 4.5. Each runs its
// requests on a named pool thread, as services do, and prints what the application saw.
import java.util.Arrays;
import org.apache.http.client.methods.CloseableHttpResponse;
import org.apache.http.client.methods.HttpGet;
import org.apache.http.client.methods.HttpPost;
import org.apache.http.entity.ByteArrayEntity;
import org.apache.http.impl.client.CloseableHttpClient;
import org.apache.http.impl.client.HttpClients;
import org.apache.http.impl.conn.PoolingHttpClientConnectionManager;
import org.apache.http.util.EntityUtils;

public class AppClients {
    public static void main(String[] args) throws Exception {
        String mode = args[0];
        String url = args[1];
        String threadName = args[2];
        Thread worker = new Thread(() -> {
            try {
                if (mode.equals("keepalive")) {
                    keepAlive(url, Long.parseLong(args[3]));
                } else {
                    upload(url, Integer.parseInt(args[3]));
                }
            } catch (Exception e) {
                System.out.println("unexpected: " + e);
            }
        }, threadName);
        worker.start();
        worker.join();
    }

    /// A pooled keep-alive connection reused after the server's idle timeout: no stale check
    /// (validateAfterInactivity disabled) and no automatic retry, as many services configure it.
    static void keepAlive(String url, long idleMillis) throws Exception {
        PoolingHttpClientConnectionManager pool = new PoolingHttpClientConnectionManager();
        pool.setValidateAfterInactivity(-1);
        try (CloseableHttpClient client = HttpClients.custom()
                .setConnectionManager(pool)
                .disableAutomaticRetries()
                .build()) {
            for (int i = 1; i <= 2; i++) {
                if (i == 2) {
                    Thread.sleep(idleMillis);
                }
                try (CloseableHttpResponse response = client.execute(new HttpGet(url))) {
                    EntityUtils.consume(response.getEntity());
                    System.out.println("request " + i + ": " + response.getStatusLine());
                } catch (Exception e) {
                    System.out.println("request " + i + ": " + e);
                }
            }
        }
    }

    /// One large POST; the server dies while it is being sent.
    static void upload(String url, int megabytes) throws Exception {
        byte[] body = new byte[megabytes << 20];
        Arrays.fill(body, (byte) 'x');
        try (CloseableHttpClient client = HttpClients.custom().disableAutomaticRetries().build()) {
            HttpPost post = new HttpPost(url);
            post.setEntity(new ByteArrayEntity(body));
            System.out.println("uploading " + body.length + " bytes");
            try (CloseableHttpResponse response = client.execute(post)) {
                System.out.println("upload: " + response.getStatusLine());
            } catch (Exception e) {
                System.out.println("upload: " + e);
            }
        }
    }
}
