// The broker side of MSK IAM for the tests' Apache Kafka: checks an OAUTHBEARER token as
// MSK does, by its SigV4 signature, recomputed with the AWS SDK for Java's own Aws4Signer
// from the secret of the token's access key, and refuses a token that is for another
// region or service, expired, signed with expired credentials or with a wrong key or
// signature. (MSK also checks the identity's IAM policy; the tests' principals are super
// users instead, and ACLs are tested with SCRAM.)
//
// Configured through the listener's JAAS options:
//   listener.name.iam.oauthbearer.sasl.jaas.config=...OAuthBearerLoginModule required
//     region="us-east-1" keys="/path/keys" log="/path/validations";
// keys: one line per access key, "ACCESS_KEY SECRET SESSION_TOKEN|- EXPIRES_EPOCH_MS|- PRINCIPAL",
// read again for every token (a test adds keys as it rotates them); log: a line per token
// checked, "accepted ACCESS_KEY ..." or "refused: why".
import java.io.IOException;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.security.MessageDigest;
import java.time.Clock;
import java.time.Instant;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import javax.security.auth.callback.Callback;
import javax.security.auth.callback.UnsupportedCallbackException;
import javax.security.auth.login.AppConfigurationEntry;
import org.apache.kafka.common.security.auth.AuthenticateCallbackHandler;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerExtensionsValidatorCallback;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerToken;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallback;
import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.AwsCredentials;
import software.amazon.awssdk.auth.credentials.AwsSessionCredentials;
import software.amazon.awssdk.auth.signer.Aws4Signer;
import software.amazon.awssdk.auth.signer.params.Aws4PresignerParams;
import software.amazon.awssdk.http.SdkHttpFullRequest;
import software.amazon.awssdk.http.SdkHttpMethod;
import software.amazon.awssdk.regions.Region;

public class SigV4TokenValidator implements AuthenticateCallbackHandler {
    private String region;
    private Path keys;
    private Path log;

    static final class Refused extends Exception {
        Refused(String why) { super(why); }
    }

    @Override
    public void configure(Map<String, ?> configs, String mechanism, List<AppConfigurationEntry> jaas) {
        Map<String, ?> options = jaas.get(0).getOptions();
        region = (String) options.get("region");
        keys = Path.of((String) options.get("keys"));
        log = Path.of((String) options.get("log"));
    }

    @Override
    public void handle(Callback[] callbacks) throws IOException, UnsupportedCallbackException {
        for (Callback callback : callbacks) {
            if (callback instanceof OAuthBearerValidatorCallback) {
                OAuthBearerValidatorCallback v = (OAuthBearerValidatorCallback) callback;
                try {
                    v.token(validate(v.tokenValue()));
                } catch (Refused e) {
                    note("refused: " + e.getMessage());
                    v.error("invalid_token", null, null);
                }
            } else if (callback instanceof OAuthBearerExtensionsValidatorCallback) {
                // No extensions are expected, none are taken.
            } else {
                throw new UnsupportedCallbackException(callback);
            }
        }
    }

    private OAuthBearerToken validate(String value) throws Refused, IOException {
        URI uri;
        try {
            uri = URI.create(new String(Base64.getUrlDecoder().decode(value), StandardCharsets.UTF_8));
        } catch (IllegalArgumentException e) {
            throw new Refused("not a base64url-encoded URL");
        }
        String host = "kafka." + region + ".amazonaws.com";
        if (!"https".equals(uri.getScheme()) || !host.equals(uri.getHost())) {
            throw new Refused("token for " + uri.getScheme() + "://" + uri.getHost() + ", this cluster is " + host);
        }
        Map<String, String> params = new HashMap<>();
        for (String pair : uri.getRawQuery().split("&")) {
            int eq = pair.indexOf('=');
            params.put(URLDecoder.decode(pair.substring(0, eq), StandardCharsets.UTF_8), URLDecoder.decode(pair.substring(eq + 1), StandardCharsets.UTF_8));
        }
        expect(params, "Action", "kafka-cluster:Connect");
        expect(params, "X-Amz-Algorithm", "AWS4-HMAC-SHA256");
        expect(params, "X-Amz-SignedHeaders", "host");
        String[] scope = params.getOrDefault("X-Amz-Credential", "").split("/");
        if (scope.length != 5 || !scope[2].equals(region) || !scope[3].equals("kafka-cluster") || !scope[4].equals("aws4_request")) {
            throw new Refused("credential scope " + String.join("/", List.of(scope).subList(Math.min(1, scope.length), scope.length)) + " is not <date>/" + region + "/kafka-cluster/aws4_request");
        }
        String[] key = lookup(scope[0]);
        Instant signed = LocalDateTime.parse(params.get("X-Amz-Date"), DateTimeFormatter.ofPattern("yyyyMMdd'T'HHmmss'Z'")).toInstant(ZoneOffset.UTC);
        long expires = Long.parseLong(params.get("X-Amz-Expires"));
        long now = System.currentTimeMillis();
        long until = signed.toEpochMilli() + expires * 1000;
        if (until <= now) throw new Refused("token of " + scope[0] + " expired " + (now - until) + " ms ago");
        if (signed.toEpochMilli() > now + 300_000) throw new Refused("token signed in the future");
        if (!key[3].equals("-")) {
            long keyExpires = Long.parseLong(key[3]);
            if (keyExpires <= now) throw new Refused("credentials " + scope[0] + " expired " + (now - keyExpires) + " ms ago");
            until = Math.min(until, keyExpires);
        }
        AwsCredentials credentials;
        if (key[2].equals("-")) {
            if (params.containsKey("X-Amz-Security-Token")) throw new Refused("a session token with a long-term key");
            credentials = AwsBasicCredentials.create(key[0], key[1]);
        } else {
            expect(params, "X-Amz-Security-Token", key[2]);
            credentials = AwsSessionCredentials.create(key[0], key[1], key[2]);
        }
        SdkHttpFullRequest request = SdkHttpFullRequest.builder()
            .method(SdkHttpMethod.GET).protocol("https").host(host)
            .appendRawQueryParameter("Action", "kafka-cluster:Connect").build();
        Aws4PresignerParams presign = Aws4PresignerParams.builder()
            .awsCredentials(credentials).signingRegion(Region.of(region)).signingName("kafka-cluster")
            .expirationTime(signed.plusSeconds(expires)).signingClockOverride(Clock.fixed(signed, ZoneOffset.UTC)).build();
        String expected = Aws4Signer.create().presign(request, presign).rawQueryParameters().get("X-Amz-Signature").get(0);
        String got = params.getOrDefault("X-Amz-Signature", "");
        if (!MessageDigest.isEqual(expected.getBytes(StandardCharsets.US_ASCII), got.getBytes(StandardCharsets.US_ASCII))) {
            throw new Refused("signature of " + scope[0] + " does not match");
        }
        note("accepted " + scope[0] + " principal " + key[4] + " until " + until);
        return token(value, key[4], signed.toEpochMilli(), until);
    }

    private static void expect(Map<String, String> params, String name, String value) throws Refused {
        if (!value.equals(params.get(name))) throw new Refused(name + " is " + params.get(name) + ", expected " + value);
    }

    private String[] lookup(String accessKey) throws Refused, IOException {
        for (String line : Files.readAllLines(keys)) {
            String[] f = line.trim().split("\\s+");
            if (f.length == 5 && f[0].equals(accessKey)) return f;
        }
        throw new Refused("unknown access key " + accessKey);
    }

    private synchronized void note(String line) throws IOException {
        Files.writeString(log, Instant.now() + " " + line + "\n", StandardCharsets.UTF_8, StandardOpenOption.CREATE, StandardOpenOption.APPEND);
    }

    private static OAuthBearerToken token(String value, String principal, long start, long until) {
        return new OAuthBearerToken() {
            public String value() { return value; }
            public Set<String> scope() { return Set.of(); }
            public long lifetimeMs() { return until; }
            public String principalName() { return principal; }
            public Long startTimeMs() { return start; }
        };
    }

    @Override
    public void close() {}
}
