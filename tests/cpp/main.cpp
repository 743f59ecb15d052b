// tests/cpp/main.cpp — doctest runner. Fails a run that made no assertion: glog (pulled in by
// torch) defines CHECK, and a test file that includes doctest before torch silently loses its
// checks. Torch headers come first in every test file for the same reason.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

namespace {
int g_asserts = 0;

struct AssertCounter : doctest::IReporter {
  explicit AssertCounter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& s) override { g_asserts = s.numAsserts; }
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("assert_counter", 1, AssertCounter);
}  // namespace

int main(int argc, char** argv) {
  c10::GradMode::set_enabled(false);
  doctest::Context ctx(argc, argv);
  int rc = ctx.run();
  if (ctx.shouldExit()) return rc;
  if (rc == 0 && g_asserts == 0) {
    std::fprintf(stderr, "no assertion ran: is doctest's CHECK replaced by glog's?\n");
    return 1;
  }
  return rc;
}
