/* Stand-in for Apple's <TargetConditionals.h>, used only by
 * installer/macos/typecheck.sh to type-check d8 for macOS on Linux, where
 * Apple's SDK is not available. Nothing built with it is linked or shipped.
 * It says what a macOS (not iOS) target is. */
#ifndef D8_STANDIN_TARGET_CONDITIONALS_H
#define D8_STANDIN_TARGET_CONDITIONALS_H
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_TV 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_VISION 0
#define TARGET_OS_SIMULATOR 0
#define TARGET_OS_EMBEDDED 0
#endif
