/* Stand-in for the C library's <assert.h> (see TargetConditionals.h here):
 * for a type-check only; nothing built with it runs. */
#ifndef D8_STANDIN_ASSERT_H
#define D8_STANDIN_ASSERT_H
#define assert(e) ((void)0)
#endif
