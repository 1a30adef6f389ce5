// Prints the MSK IAM token AWS's own signer makes: aws-msk-iam-auth's
// IAMOAuthBearerLoginCallbackHandler (what Java Kafka clients configure for MSK IAM over
// OAUTHBEARER), with the credentials and region of the system properties
// aws.accessKeyId, aws.secretAccessKey, aws.sessionToken and aws.region (the AWS SDK's
// default chains read them). tests/msk_iam.rs compares docrepl's token with it.
import java.util.List;
import java.util.Map;
import javax.security.auth.callback.Callback;
import javax.security.auth.login.AppConfigurationEntry;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerTokenCallback;
import software.amazon.msk.auth.iam.IAMOAuthBearerLoginCallbackHandler;

public class AwsSignerToken {
    public static void main(String[] args) throws Exception {
        IAMOAuthBearerLoginCallbackHandler handler = new IAMOAuthBearerLoginCallbackHandler();
        AppConfigurationEntry login = new AppConfigurationEntry(
            OAuthBearerLoginModule.class.getName(), AppConfigurationEntry.LoginModuleControlFlag.REQUIRED, Map.of());
        handler.configure(Map.of(), OAuthBearerLoginModule.OAUTHBEARER_MECHANISM, List.of(login));
        OAuthBearerTokenCallback callback = new OAuthBearerTokenCallback();
        handler.handle(new Callback[] {callback});
        System.out.println(callback.token().value());
    }
}
