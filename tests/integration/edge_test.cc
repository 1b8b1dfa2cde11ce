// The office edge with the real binaries (README "Authenticated ingest", "Web
// forms and browsers"): what a browser form sends reaches the central store
// exactly as the same record sent as JSON, and a post without the agent's
// token stores nothing.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "cli/net/http_client.h"
#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {

using namespace std::chrono_literals;

// The payload with its external_id value replaced, so records sent under
// different keys can be compared field for field.
std::string withoutKey(std::string payload, const std::string& key) {
  const size_t at = payload.find(key);
  if (at != std::string::npos) payload.replace(at, key.size(), "KEY");
  return payload;
}

TEST_F(PipelineTest, FormPostsAreStoredExactlyLikeJsonAndUnauthenticatedPostsNotAtAll) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(1, 1));
  auto url = cli::parseUrl(pipeline_->agentUrls().at(0));
  ASSERT_TRUE(url.isOk());
  cli::HttpConnection conn(url->host, url->port,
                           cli::HttpClientOptions{.bearer_token = pipeline_->agentTokens().at(0)});
  cli::HttpConnection anonymous(url->host, url->port);

  const std::string json =
      R"({"external_id":"form-json","name":"Zoë Ärger","email":"Zoe.Arger@Example.com",)"
      R"("channel":"web","created_at":"2026-11-25T12:53:47+01:00","phone":"(415) 555-0132",)"
      R"("consent_marketing":"yes","notes":"line one\r\nline two & more"})";
  auto a = conn.request("POST", "/v1/records/customer", "application/json", json, 10s);
  ASSERT_TRUE(a.isOk());
  ASSERT_EQ(a->status, 200) << a->body;

  const std::string urlencoded =
      "external_id=form-url&name=Zo%C3%AB+%C3%84rger&email=Zoe.Arger%40Example.com&channel=web"
      "&created_at=2026-11-25T12%3A53%3A47%2B01%3A00&phone=%28415%29+555-0132"
      "&consent_marketing=yes&notes=line+one%0D%0Aline+two+%26+more";
  auto b = conn.request("POST", "/v1/records/customer", "application/x-www-form-urlencoded",
                        urlencoded, 10s);
  ASSERT_TRUE(b.isOk());
  ASSERT_EQ(b->status, 200) << b->body;
  EXPECT_NE(b->body.find(R"("accepted":1)"), std::string::npos) << b->body;

  const std::string boundary = "----branchlineFormBoundary7MA4YWxkTrZu0gW";
  auto part = [&](const std::string& name, const std::string& value) {
    return "--" + boundary + "\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\n" +
           value + "\r\n";
  };
  const std::string multipart = part("external_id", "form-mp") + part("name", "Zoë Ärger") +
                                part("email", "Zoe.Arger@Example.com") + part("channel", "web") +
                                part("created_at", "2026-11-25T12:53:47+01:00") +
                                part("phone", "(415) 555-0132") + part("consent_marketing", "yes") +
                                part("notes", "line one\r\nline two & more") + "--" + boundary +
                                "--\r\n";
  auto c = conn.request("POST", "/v1/records/customer", "multipart/form-data; boundary=" + boundary,
                        multipart, 10s);
  ASSERT_TRUE(c.isOk());
  ASSERT_EQ(c->status, 200) << c->body;

  // Without the token, with another agent's kind of credential: nothing stored.
  auto refused =
      anonymous.request("POST", "/v1/records/customer", "application/x-www-form-urlencoded",
                        "external_id=form-anon&name=X", 10s);
  ASSERT_TRUE(refused.isOk());
  EXPECT_EQ(refused->status, 401) << refused->body;

  ASSERT_TRUE(waitForDrain(3, 0, 60));
  auto stored = readRecords(store());
  ASSERT_EQ(stored.size(), 3u);
  ASSERT_TRUE(stored.count("form-json") && stored.count("form-url") && stored.count("form-mp"));
  const std::string reference = withoutKey(stored["form-json"].payload, "form-json");
  EXPECT_EQ(withoutKey(stored["form-url"].payload, "form-url"), reference);
  EXPECT_EQ(withoutKey(stored["form-mp"].payload, "form-mp"), reference);
  EXPECT_EQ(stored.count("form-anon"), 0u);
  EXPECT_NE(reference.find("+14155550132"), std::string::npos) << reference;
}

}  // namespace
}  // namespace branchline::testing
